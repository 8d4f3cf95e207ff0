//! Reading one token's records: its cold record, state and enrollment for the admin commands,
//! and everything needed to load it (or restore it after a failed write) into the engine.

use std::collections::{HashMap, HashSet};

use zoftoken_engine::{
    ChallengeRecord, Engine, PendingRecord, TokenRecord, TokenStateRecord, Transaction,
};
use zoftoken_proto::TokenId;

use crate::error::{corrupt, StoreError};
use crate::kv::{Cf, KvError};
use crate::scan::{id_key, try_scan};
use crate::schema;
use crate::Store;

impl Store {
    /// The cold record of a token: `(service, username)`.
    pub fn token_info(&self, id: &TokenId) -> Result<Option<(String, String)>, StoreError> {
        let info = self.kv.get(Cf::Tokens, &id.0);
        match info.map_err(|e| self.unreachable(e.into()))? {
            None => Ok(None),
            Some(v) => schema::decode_info(&v)
                .map(Some)
                .ok_or_else(|| corrupt(Cf::Tokens, &id.0, "undecodable")),
        }
    }

    /// The stored state of a token, if paired.
    pub fn token_state(&self, id: &TokenId) -> Result<Option<TokenStateRecord>, StoreError> {
        match self.kv.get(Cf::State, &id.0)? {
            None => Ok(None),
            Some(v) => schema::decode_state(*id, &v)
                .map(Some)
                .ok_or_else(|| corrupt(Cf::State, &id.0, "undecodable")),
        }
    }

    /// Whether a token has a pending enrollment stored, and when it expires.
    pub fn enrollment_expiry(&self, id: &TokenId) -> Result<Option<u64>, StoreError> {
        Ok(self.enrollment(id)?.map(|p| p.expires_ms))
    }

    /// A token's pending enrollment as stored (expired or not).
    pub fn enrollment(&self, id: &TokenId) -> Result<Option<PendingRecord>, StoreError> {
        match self.kv.get(Cf::Enrollments, &id.0)? {
            None => Ok(None),
            Some(v) => schema::decode_pending(&self.key, *id, &v)
                .map(Some)
                .ok_or_else(|| corrupt(Cf::Enrollments, &id.0, "undecodable or not authentic")),
        }
    }

    /// Visits every token's cold record in id order: `(id, service, username)`.
    pub fn for_each_token(
        &self,
        visit: &mut dyn FnMut(TokenId, &str, &str) -> bool,
    ) -> Result<(), StoreError> {
        try_scan(&*self.kv, Cf::Tokens, &[], None, &mut |k, v| {
            let id = id_key(Cf::Tokens, k)?;
            let (s, u) =
                schema::decode_info(v).ok_or_else(|| corrupt(Cf::Tokens, k, "undecodable"))?;
            Ok(visit(TokenId(id), &s, &u))
        })
    }

    /// Loads one token (paired or pending) with its backup codes and transactions, for an
    /// admin command that works on the database while the server is stopped. Returns whether
    /// anything was found.
    pub fn load_one(&self, engine: &Engine, now_ms: u64, id: &TokenId) -> Result<bool, StoreError> {
        self.load_one_from_storage(engine, now_ms, id)
            .map_err(|e| self.unreachable(e))
    }

    /// A read that could not reach the database (the store's `Io` kind) is reported as a
    /// failing database, as a failed write is: `/readyz` is not ready and the once-a-second
    /// probe finds out when the database can write again. Other errors pass unchanged.
    pub(crate) fn unreachable(&self, e: StoreError) -> StoreError {
        if matches!(e, StoreError::Kv(KvError::Io(_))) {
            self.health().write_failed(&e);
        }
        e
    }

    fn load_one_from_storage(
        &self,
        engine: &Engine,
        now_ms: u64,
        id: &TokenId,
    ) -> Result<bool, StoreError> {
        let stored = self.read_token(engine, id)?;
        let found = stored.token.is_some() || stored.pending.is_some();
        stored.apply(engine, now_ms)?;
        let txs = self.transactions_of(&std::iter::once(id.0).collect())?;
        engine.load_transactions(txs.into_values().flatten().collect());
        Ok(found || self.token_info(id)?.is_some())
    }

    /// The stored transactions of the tokens in `wanted`, by token (one scan of all
    /// transactions: there is no index by token).
    pub(crate) fn transactions_of(
        &self,
        wanted: &HashSet<[u8; 16]>,
    ) -> Result<HashMap<[u8; 16], Vec<Transaction>>, StoreError> {
        let mut txs: HashMap<[u8; 16], Vec<_>> = Default::default();
        self.kv.scan(Cf::Transactions, &[], None, &mut |k, v| {
            if let Some(t) = k
                .try_into()
                .ok()
                .and_then(|k| schema::decode_transaction(&self.key, k, v))
            {
                if wanted.contains(&t.token_id.0) {
                    txs.entry(t.token_id.0).or_default().push(t);
                }
            }
            true
        })?;
        Ok(txs)
    }

    /// Reads one token's records (paired token, pending enrollment, backup codes, offline
    /// challenge; not its transactions) without changing the engine.
    pub(crate) fn read_token(
        &self,
        engine: &Engine,
        id: &TokenId,
    ) -> Result<StoredToken, StoreError> {
        let records = TokenRecords {
            secrets: self.kv.get(Cf::Secrets, &id.0)?,
            state: self.kv.get(Cf::State, &id.0)?,
            pending: self.kv.get(Cf::Enrollments, &id.0)?,
            backup: self.kv.get(Cf::BackupCodes, &id.0)?,
            challenge: Some(self.kv.get(Cf::OfflineChallenges, &id.0)?),
        };
        self.decode_token(engine, id, records)
    }

    /// [`Store::read_token`] for many tokens, in the order of `ids`: five reads of many keys
    /// (secrets, state, pending enrollments, backup codes, offline challenges), not five per
    /// token.
    pub(crate) fn read_tokens(
        &self,
        engine: &Engine,
        ids: &[TokenId],
    ) -> Result<Vec<StoredToken>, StoreError> {
        self.read_each_token(engine, ids, &|_| true)?
            .into_iter()
            .collect()
    }

    /// As [`Store::read_tokens`], with each token's records opened on their own: a token that
    /// cannot be opened (its service is not configured here) fails alone; a read that fails
    /// fails the whole call. Offline challenges are read only for the tokens
    /// `read_challenge` names (the others' in memory stay as they are: the change feed says
    /// which changed).
    pub(crate) fn read_each_token(
        &self,
        engine: &Engine,
        ids: &[TokenId],
        read_challenge: &dyn Fn(&TokenId) -> bool,
    ) -> Result<Vec<Result<StoredToken, StoreError>>, StoreError> {
        let keys: Vec<&[u8]> = ids.iter().map(|id| &id.0[..]).collect();
        let secrets = self.kv.get_many(Cf::Secrets, &keys)?;
        let states = self.kv.get_many(Cf::State, &keys)?;
        let pending = self.kv.get_many(Cf::Enrollments, &keys)?;
        let backup = self.kv.get_many(Cf::BackupCodes, &keys)?;
        let challenged: Vec<&[u8]> = ids
            .iter()
            .filter(|id| read_challenge(id))
            .map(|id| &id.0[..])
            .collect();
        let mut challenges: HashMap<&[u8], Option<Vec<u8>>> = if challenged.is_empty() {
            HashMap::new()
        } else {
            let values = self.kv.get_many(Cf::OfflineChallenges, &challenged)?;
            challenged.into_iter().zip(values).collect()
        };
        Ok(ids
            .iter()
            .zip(secrets.into_iter().zip(states))
            .zip(pending.into_iter().zip(backup))
            .map(|((id, (secrets, state)), (pending, backup))| {
                let records = TokenRecords {
                    secrets,
                    state,
                    pending,
                    backup,
                    challenge: challenges.remove(&id.0[..]),
                };
                self.decode_token(engine, id, records)
            })
            .collect())
    }

    /// Opens and decodes one token's stored records.
    fn decode_token(
        &self,
        engine: &Engine,
        id: &TokenId,
        records: TokenRecords,
    ) -> Result<StoredToken, StoreError> {
        let mut stored = StoredToken {
            id: *id,
            token: None,
            pending: None,
            backup: None,
            challenge: None,
        };
        if let Some(v) = records.secrets {
            let s = schema::decode_secrets(&self.key, id, &v)
                .ok_or_else(|| corrupt(Cf::Secrets, &id.0, "undecodable or not authentic"))?;
            let state = records
                .state
                .ok_or_else(|| corrupt(Cf::Secrets, &id.0, "token has no state record"))?;
            let status = schema::decode_state(*id, &state)
                .ok_or_else(|| corrupt(Cf::State, &id.0, "undecodable"))?;
            let service = engine.service_index_of(&s.service).ok_or_else(|| {
                StoreError::Invalid(format!("service `{}` is not configured", s.service))
            })?;
            stored.token = Some(TokenRecord {
                kind: s.kind,
                service,
                secret: s.secret,
                pin_verifier: s.pin_verifier,
                duress_verifier: s.duress_verifier,
                status,
            });
        }
        if let Some(v) = records.pending {
            stored.pending =
                Some(schema::decode_pending(&self.key, *id, &v).ok_or_else(|| {
                    corrupt(Cf::Enrollments, &id.0, "undecodable or not authentic")
                })?);
        }
        if let Some(v) = records.backup {
            stored.backup =
                Some(schema::decode_backup(&self.key, id, &v).ok_or_else(|| {
                    corrupt(Cf::BackupCodes, &id.0, "undecodable or not authentic")
                })?);
        }
        if let Some(read) = records.challenge {
            stored.challenge = Some(
                read.map(|v| {
                    schema::decode_challenge(&self.key, id, &v).ok_or_else(|| {
                        corrupt(Cf::OfflineChallenges, &id.0, "undecodable or not authentic")
                    })
                })
                .transpose()?,
            );
        }
        Ok(stored)
    }
}

/// One token's records as read, before they are opened.
struct TokenRecords {
    secrets: Option<Vec<u8>>,
    state: Option<Vec<u8>>,
    pending: Option<Vec<u8>>,
    backup: Option<Vec<u8>>,
    /// `None`: not read.
    challenge: Option<Option<Vec<u8>>>,
}

/// One token's records as read by [`Store::read_token`].
pub(crate) struct StoredToken {
    id: TokenId,
    token: Option<TokenRecord>,
    pending: Option<PendingRecord>,
    backup: Option<Vec<[u8; 16]>>,
    /// The offline challenge as stored (`None`: not read, the one in memory stays).
    challenge: Option<Option<ChallengeRecord>>,
}

impl StoredToken {
    /// Loads the records into the engine.
    pub(crate) fn apply(self, engine: &Engine, now_ms: u64) -> Result<(), StoreError> {
        if let Some(t) = &self.token {
            engine
                .load_token(t)
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
        }
        if let Some(p) = &self.pending {
            engine
                .load_pending(now_ms, p)
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
        }
        if let Some(hashes) = self.backup {
            engine.load_backup_codes(&self.id, hashes);
        }
        if let Some(challenge) = self.challenge {
            engine.load_challenge(now_ms, &self.id, challenge);
        }
        Ok(())
    }
}
