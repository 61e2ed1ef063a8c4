//! Key and channel names: `<prefix>:{<resource>}:<kind>`, the `{…}` hash
//! tag putting every key of one resource in one Redis Cluster slot.

/// The names used under one prefix.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    prefix: String,
    /// `<prefix>:inbox:`, sent with every release.
    inboxes: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Keys { prefix: prefix.to_owned(), inboxes: format!("{prefix}:inbox:") }
    }

    /// `<prefix>:{<resource>}:<kind>`. Joined by hand: every lock operation
    /// names several keys, and `format!` took about five times as long.
    fn resource_key(&self, resource: &str, kind: &str) -> String {
        let mut name = String::with_capacity(self.prefix.len() + resource.len() + kind.len() + 4);
        name.push_str(&self.prefix);
        name.push_str(":{");
        name.push_str(resource);
        name.push_str("}:");
        name.push_str(kind);
        name
    }

    pub(crate) fn lock(&self, resource: &str) -> String {
        self.resource_key(resource, "lock")
    }

    pub(crate) fn fence(&self, resource: &str) -> String {
        self.resource_key(resource, "fence")
    }

    /// The waiter queue: a sorted set of waiter ids by arrival.
    pub(crate) fn queue(&self, resource: &str) -> String {
        self.resource_key(resource, "queue")
    }

    /// Each queued waiter's queue lease and mode.
    pub(crate) fn waiters(&self, resource: &str) -> String {
        self.resource_key(resource, "waiters")
    }

    pub(crate) fn channel(&self, resource: &str) -> String {
        self.resource_key(resource, "released")
    }

    /// The channels of every manager's inbox start with this (see [`inbox`](Self::inbox)).
    pub(crate) fn inboxes(&self) -> &str {
        &self.inboxes
    }

    /// A manager's inbox: the channel on which releases hand locks to (or
    /// name) the waiters of that manager alone.
    pub(crate) fn inbox(&self, manager: &str) -> String {
        format!("{}{manager}", self.inboxes)
    }

    pub(crate) fn flag(&self, flag: &str) -> String {
        format!("{}:flag:{{{flag}}}", self.prefix)
    }

    /// `SCAN MATCH` pattern for every lock key (glob characters in the prefix escaped).
    pub(crate) fn lock_pattern(&self) -> String {
        format!("{}:{{*}}:lock", escape_glob(&self.prefix))
    }

    pub(crate) fn flag_pattern(&self) -> String {
        format!("{}:flag:{{*}}", escape_glob(&self.prefix))
    }

    pub(crate) fn release_pattern(&self) -> String {
        format!("{}:{{*}}:released", escape_glob(&self.prefix))
    }

    /// The resource a release channel belongs to. Parsed from both ends, so
    /// a resource containing `}:` still comes back whole.
    pub(crate) fn resource_of_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        channel.strip_prefix(&self.prefix)?.strip_prefix(":{")?.strip_suffix("}:released")
    }

    pub(crate) fn resource_of_lock<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(&self.prefix)?.strip_prefix(":{")?.strip_suffix("}:lock")
    }

    pub(crate) fn flag_of_key<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(&self.prefix)?.strip_prefix(":flag:{")?.strip_suffix('}')
    }
}

fn escape_glob(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_even_with_braces() {
        let keys = Keys::new("app*");
        for resource in ["inverter_read", "a}:lock", "{x}", "zürich"] {
            assert_eq!(keys.resource_of_lock(&keys.lock(resource)), Some(resource));
            assert_eq!(keys.resource_of_channel(&keys.channel(resource)), Some(resource));
        }
        assert_eq!(keys.flag_of_key(&keys.flag(".FCRunning1")), Some(".FCRunning1"));
        assert_eq!(keys.lock_pattern(), "app\\*:{*}:lock");
        assert_eq!(keys.lock("r"), "app*:{r}:lock");
        assert_eq!(keys.fence("r"), "app*:{r}:fence");
        assert_eq!(keys.queue("r"), "app*:{r}:queue");
        assert_eq!(keys.waiters("r"), "app*:{r}:waiters");
        assert_eq!(keys.channel("r"), "app*:{r}:released");
        assert_eq!(keys.inbox("m1"), "app*:inbox:m1");
    }
}
