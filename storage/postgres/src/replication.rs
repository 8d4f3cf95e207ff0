//! What PostgreSQL says about its replication, so that the server can refuse a setup in which
//! a failover may lose writes it acknowledged: standbys that replicate asynchronously, or
//! commits that do not wait for the synchronous standbys.

use zoftoken_storage::KvError;

use crate::PgKv;

/// The replication of the database the server writes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replication {
    /// The database is a standby (read-only, in recovery).
    pub in_recovery: bool,
    /// `synchronous_commit` of this server's sessions.
    pub synchronous_commit: String,
    /// `synchronous_standby_names`: the standbys commits wait for (empty: none).
    pub synchronous_standby_names: String,
    /// Standbys (WAL senders) and how each replicates: `sync`, `quorum`, `potential`,
    /// `async`, or `unknown` when this role may not see it (grant it `pg_monitor`).
    pub standbys: Vec<(String, String)>,
}

impl Replication {
    /// Why a failover could lose an acknowledged write, if it could: a standby that is not
    /// synchronous, or commits that do not wait for their synchronous standbys.
    pub fn loss_on_failover(&self) -> Option<String> {
        let not_sync: Vec<String> = self
            .standbys
            .iter()
            .filter(|(_, state)| state != "sync" && state != "quorum")
            .map(|(name, state)| format!("{name} ({state})"))
            .collect();
        if !not_sync.is_empty() {
            return Some(format!(
                "standbys that do not confirm each commit: {}",
                not_sync.join(", ")
            ));
        }
        let waits = matches!(
            self.synchronous_commit.as_str(),
            "on" | "remote_write" | "remote_apply"
        );
        if !self.standbys.is_empty() && !waits {
            return Some(format!(
                "synchronous_commit is `{}`: commits do not wait for the standbys",
                self.synchronous_commit
            ));
        }
        None
    }
}

impl PgKv {
    /// The database's replication, as this server's connection sees it.
    pub fn replication(&self) -> Result<Replication, KvError> {
        let mut conn = self.pool.get()?;
        conn.run(|c| {
            let client = c.client();
            let in_recovery: bool = client
                .query_one("SELECT pg_is_in_recovery()", &[])?
                .try_get(0)?;
            let synchronous_commit: String = client
                .query_one("SELECT current_setting('synchronous_commit')", &[])?
                .try_get(0)?;
            let synchronous_standby_names: String = client
                .query_one("SELECT current_setting('synchronous_standby_names')", &[])?
                .try_get(0)?;
            let mut standbys = Vec::new();
            for row in client.query(
                "SELECT coalesce(application_name, ''), coalesce(sync_state, 'unknown') \
                 FROM pg_stat_replication",
                &[],
            )? {
                standbys.push((row.try_get(0)?, row.try_get(1)?));
            }
            Ok(Replication {
                in_recovery,
                synchronous_commit,
                synchronous_standby_names,
                standbys,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(standbys: &[(&str, &str)], commit: &str) -> Replication {
        Replication {
            synchronous_commit: commit.into(),
            standbys: standbys
                .iter()
                .map(|(n, s)| (n.to_string(), s.to_string()))
                .collect(),
            ..Replication::default()
        }
    }

    #[test]
    fn only_confirmed_commits_are_safe() {
        assert_eq!(with(&[], "on").loss_on_failover(), None);
        assert_eq!(with(&[], "local").loss_on_failover(), None, "no standby");
        assert_eq!(with(&[("b", "sync")], "on").loss_on_failover(), None);
        assert_eq!(
            with(&[("b", "quorum"), ("c", "quorum")], "remote_apply").loss_on_failover(),
            None
        );
        assert!(with(&[("b", "async")], "on")
            .loss_on_failover()
            .unwrap()
            .contains("b (async)"));
        assert!(with(&[("b", "sync"), ("c", "potential")], "on")
            .loss_on_failover()
            .is_some());
        assert!(with(&[("b", "unknown")], "on").loss_on_failover().is_some());
        assert!(with(&[("b", "sync")], "local")
            .loss_on_failover()
            .unwrap()
            .contains("local"));
        assert!(with(&[("b", "sync")], "off").loss_on_failover().is_some());
    }
}
