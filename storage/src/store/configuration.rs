//! Services and authkeys kept in the database (`config_source: database`): services sealed
//! (they hold the webhook secret), authkeys by the hash of their secret only.

use crate::config_documents::{AuthkeyDoc, ServiceDoc};
use crate::error::{corrupt, StoreError};
use crate::kv::{Cf, Durability, WriteBatch};
use crate::scan::try_scan;
use crate::Store;

impl Store {
    /// The services kept in the database (`config_source: database`), by name.
    pub fn services(&self) -> Result<Vec<ServiceDoc>, StoreError> {
        let mut out = Vec::new();
        try_scan(&*self.kv, Cf::Services, &[], None, &mut |k, v| {
            let doc = self
                .key
                .open(Cf::Services, k, v)
                .and_then(|p| serde_json::from_slice::<ServiceDoc>(&p).ok())
                .ok_or_else(|| corrupt(Cf::Services, k, "undecodable or not authentic"))?;
            out.push(doc);
            Ok(true)
        })?;
        Ok(out)
    }

    /// Inserts or replaces a service (sealed: it holds the webhook secret).
    pub fn put_service(&self, doc: &ServiceDoc) -> Result<(), StoreError> {
        let json = zeroize::Zeroizing::new(
            serde_json::to_vec(doc).map_err(|e| StoreError::Invalid(e.to_string()))?,
        );
        let mut b = WriteBatch::new();
        b.put(
            Cf::Services,
            doc.name.as_bytes(),
            self.key.seal(Cf::Services, doc.name.as_bytes(), &json),
        );
        self.kv.write(&b, Durability::Fsync)?;
        Ok(())
    }

    /// Deletes a service; returns whether it existed.
    pub fn delete_service(&self, name: &str) -> Result<bool, StoreError> {
        let existed = self.kv.get(Cf::Services, name.as_bytes())?.is_some();
        let mut b = WriteBatch::new();
        b.delete(Cf::Services, name.as_bytes());
        self.kv.write(&b, Durability::Fsync)?;
        Ok(existed)
    }

    /// The authkeys kept in the database (hashes only).
    pub fn authkeys(&self) -> Result<Vec<AuthkeyDoc>, StoreError> {
        let mut out = Vec::new();
        try_scan(&*self.kv, Cf::Authkeys, &[], None, &mut |k, v| {
            match serde_json::from_slice::<AuthkeyDoc>(v) {
                Ok(d) if d.secret.is_none() => out.push(d),
                _ => return Err(corrupt(Cf::Authkeys, k, "undecodable")),
            }
            Ok(true)
        })?;
        Ok(out)
    }

    /// Inserts or replaces an authkey. Refuses a document holding a secret: only hashes are
    /// stored.
    pub fn put_authkey(&self, doc: &AuthkeyDoc) -> Result<(), StoreError> {
        if doc.secret.is_some() || doc.secret_hash.is_none() {
            return Err(StoreError::Invalid(
                "authkeys are stored by the hash of their secret only".into(),
            ));
        }
        let json = serde_json::to_vec(doc).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let mut b = WriteBatch::new();
        b.put(Cf::Authkeys, doc.name.as_bytes(), json);
        self.kv.write(&b, Durability::Fsync)?;
        Ok(())
    }

    /// Deletes an authkey; returns whether it existed.
    pub fn delete_authkey(&self, name: &str) -> Result<bool, StoreError> {
        let existed = self.kv.get(Cf::Authkeys, name.as_bytes())?.is_some();
        let mut b = WriteBatch::new();
        b.delete(Cf::Authkeys, name.as_bytes());
        self.kv.write(&b, Durability::Fsync)?;
        Ok(existed)
    }
}
