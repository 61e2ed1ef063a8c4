//! [`EtcdStatusManager`]: named flags as keys `PREFIX/flag/<name>`, holding
//! the [`FlagInfo`] as JSON; a flag with a TTL is bound to an etcd lease of
//! its own (whole seconds, at least etcd's minimum), and reads treat it as
//! gone from its exact expiry on.

use std::time::SystemTime;

use async_trait::async_trait;
use etcd_client::{Client, DeleteOptions, GetOptions, PutOptions};
use lockman_core::{FlagInfo, FlagOptions, LockError, StatusManager};

use crate::keys::{encode, flags_dir};
use crate::retry::unsent_again;
use crate::{BACKEND, EtcdBackend};

/// Flags stored in etcd, over the same connection as an [`EtcdBackend`].
#[derive(Clone)]
pub struct EtcdStatusManager {
    client: Client,
    dir: String,
    attempts: usize,
}

impl std::fmt::Debug for EtcdStatusManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStatusManager").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl EtcdStatusManager {
    /// Flags under the backend's prefix, on its connection.
    pub fn new(backend: &EtcdBackend) -> Self {
        EtcdStatusManager {
            client: backend.client().clone(),
            dir: flags_dir(&backend.options().prefix),
            attempts: backend.attempts(),
        }
    }

    fn key(&self, flag: &str) -> Result<String, LockError> {
        lockman_core::validate_name(flag)?;
        Ok(format!("{}{}", self.dir, encode(flag)))
    }

    fn error(action: &str, flag: &str, e: etcd_client::Error) -> LockError {
        LockError::backend_caused_by(BACKEND, action, Some(flag), e)
    }

    /// A stored flag that has not expired.
    fn live(bytes: &[u8], flag: &str) -> Option<FlagInfo> {
        match serde_json::from_slice::<FlagInfo>(bytes) {
            Ok(info) if !info.expired_at(SystemTime::now()) => Some(info),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(flag, error = %e, "ignoring an unreadable etcd flag record");
                None
            }
        }
    }
}

#[async_trait]
impl StatusManager for EtcdStatusManager {
    fn name(&self) -> &str {
        BACKEND
    }

    async fn set(&self, flag: &str, options: FlagOptions) -> Result<(), LockError> {
        let key = self.key(flag)?;
        let info = FlagInfo::new(flag, &options, BACKEND);
        let value = serde_json::to_vec(&info)
            .map_err(|e| LockError::backend_caused_by(BACKEND, "encoding a flag", Some(flag), e))?;
        let mut put = PutOptions::new();
        if let Some(ttl) = options.ttl {
            let secs = ttl.as_secs().saturating_add(u64::from(ttl.subsec_nanos() > 0)).max(1);
            let ttl = i64::try_from(secs).unwrap_or(i64::MAX);
            let lease = unsent_again(self.attempts, || {
                let mut leases = self.client.lease_client();
                async move { leases.grant(ttl, None).await }
            })
            .await
            .map_err(|e| Self::error("granting a flag's TTL lease", flag, e))?;
            put = put.with_lease(lease.id());
        }
        unsent_again(self.attempts, || {
            let (mut kv, key, value, put) = (self.client.kv_client(), key.clone(), value.clone(), put.clone());
            async move { kv.put(key, value, Some(put)).await }
        })
        .await
        .map_err(|e| Self::error("setting a flag", flag, e))?;
        Ok(())
    }

    async fn clear(&self, flag: &str) -> Result<bool, LockError> {
        Ok(self.take(flag).await?.is_some())
    }

    async fn get(&self, flag: &str) -> Result<Option<FlagInfo>, LockError> {
        let key = self.key(flag)?;
        let response = unsent_again(self.attempts, || {
            let (mut kv, key) = (self.client.kv_client(), key.clone());
            async move { kv.get(key, None).await }
        })
        .await
        .map_err(|e| Self::error("reading a flag", flag, e))?;
        Ok(response.kvs().first().and_then(|kv| Self::live(kv.value(), flag)))
    }

    async fn take(&self, flag: &str) -> Result<Option<FlagInfo>, LockError> {
        let key = self.key(flag)?;
        // Only the one delete that removed the key gets its previous value.
        let response = unsent_again(self.attempts, || {
            let (mut kv, key) = (self.client.kv_client(), key.clone());
            async move { kv.delete(key, Some(DeleteOptions::new().with_prev_key())).await }
        })
        .await
        .map_err(|e| Self::error("clearing a flag", flag, e))?;
        Ok(response.prev_kvs().first().and_then(|kv| Self::live(kv.value(), flag)))
    }

    async fn list(&self) -> Result<Vec<FlagInfo>, LockError> {
        let response = unsent_again(self.attempts, || {
            let (mut kv, dir) = (self.client.kv_client(), self.dir.clone());
            async move { kv.get(dir, Some(GetOptions::new().with_prefix())).await }
        })
        .await
        .map_err(|e| Self::error("listing flags", "*", e))?;
        let mut flags: Vec<FlagInfo> =
            response.kvs().iter().filter_map(|kv| Self::live(kv.value(), &String::from_utf8_lossy(kv.key()))).collect();
        flags.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(flags)
    }
}
