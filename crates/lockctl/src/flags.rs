//! `lockctl flag list|get|set|clear`: the StatusManager.

use std::time::SystemTime;

use lockman::{Backends, FlagOptions};

use crate::cli::FlagCommand;
use crate::exit::{self, Failure};
use crate::output::{self, FlagJson};

/// Runs one `flag` command.
pub async fn flag(backends: &Backends, command: &FlagCommand, json: bool) -> Result<u8, Failure> {
    let status = &backends.status;
    match command {
        FlagCommand::List => {
            let flags = status.list().await?;
            let now = SystemTime::now();
            if json {
                let rows: Vec<FlagJson<'_>> = flags.iter().map(|f| FlagJson::new(f, now)).collect();
                output::say_json(&rows)?;
            } else if flags.is_empty() {
                output::say(&format!("no flags set ({})", backends.chosen))?;
            } else {
                let rows: Vec<Vec<String>> = flags.iter().map(|f| output::flag_row(f, now)).collect();
                output::say(&output::table(&output::FLAG_HEADER, &rows))?;
            }
            Ok(exit::OK)
        }
        FlagCommand::Get { name } => match status.get(name).await? {
            Some(flag) => {
                let now = SystemTime::now();
                if json {
                    output::say_json(&FlagJson::new(&flag, now))?;
                } else {
                    output::say(&output::flag_details(&flag, now))?;
                }
                Ok(exit::OK)
            }
            None => {
                if json {
                    output::say("null")?;
                } else {
                    output::say(&format!("{}: not set", output::quoted(name)))?;
                }
                Ok(exit::NO)
            }
        },
        FlagCommand::Set { name, ttl, value } => {
            let mut options = FlagOptions::new();
            if let Some(ttl) = ttl {
                options = options.ttl(*ttl);
            }
            if let Some(value) = value {
                options = options.value(value.clone());
            }
            status.set(name, options.clone()).await?;
            if json {
                let flag = lockman::FlagInfo::new(name.clone(), &options, status.name());
                output::say_json(&FlagJson::new(&flag, SystemTime::now()))?;
            } else {
                let ttl =
                    ttl.map(|t| format!(", clears itself in {}", humantime::format_duration(t))).unwrap_or_default();
                output::say(&format!("set {}{ttl}", output::quoted(name)))?;
            }
            Ok(exit::OK)
        }
        FlagCommand::Clear { name } => {
            let was_set = status.clear(name).await?;
            if json {
                output::say_json(&serde_json::json!({ "name": name, "was_set": was_set }))?;
            } else {
                let what = if was_set { "cleared" } else { "was not set" };
                output::say(&format!("{} {what}", output::quoted(name)))?;
            }
            Ok(if was_set { exit::OK } else { exit::NO })
        }
    }
}
