//! Opening a store: a database without any record is initialised (schema version, master-key
//! check); otherwise its schema is migrated if older and the master key is checked. The
//! event-sequence floor is read, and the outbox sequence continues past everything used.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crate::crypt::MasterKey;
use crate::error::{corrupt, StoreError};
use crate::health::Health;
use crate::kv::{Cf, Durability, KvStore, WriteBatch};
use crate::scan::try_scan;
use crate::schema::{meta, SCHEMA_VERSION};
use crate::watermark::OutboxWatermark;
use crate::Store;

/// How long a database with records but no schema version is waited for (another process
/// initialising it) before it is refused.
const INIT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// One upgrade step of the schema: from version `n` (its index + 1) to `n + 1`.
type Migration = fn(&dyn KvStore) -> Result<(), StoreError>;

/// The migration hook: `MIGRATIONS[n - 1]` upgrades a version-`n` database to `n + 1`. Empty
/// while version 1 is the only one.
const MIGRATIONS: &[Migration] = &[];

impl Store {
    /// Opens a store over `kv`. A database without any record is initialised (schema version,
    /// master-key check); otherwise the schema is migrated if older and the master key is
    /// checked. Never silently starts empty over existing data.
    pub fn open(
        kv: Arc<dyn KvStore>,
        key: MasterKey,
        durability: Durability,
    ) -> Result<Store, StoreError> {
        match Self::schema_or_initialise(&*kv, &key)? {
            None => {}
            Some(v) => {
                let found = v
                    .as_slice()
                    .try_into()
                    .map(u32::from_be_bytes)
                    .map_err(|_| corrupt(Cf::Meta, meta::SCHEMA, "not a version number"))?;
                if found > SCHEMA_VERSION {
                    return Err(StoreError::NewerSchema {
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
                Self::check_key(&*kv, &key)?;
                for version in found..SCHEMA_VERSION {
                    let step = MIGRATIONS
                        .get(version as usize - 1)
                        .ok_or(StoreError::Invalid(format!(
                            "no migration from schema version {version}"
                        )))?;
                    step(&*kv)?;
                    let mut b = WriteBatch::new();
                    b.put(Cf::Meta, meta::SCHEMA, (version + 1).to_be_bytes());
                    kv.write(&b, Durability::Fsync)?;
                }
            }
        }
        Self::check_key(&*kv, &key)?;
        let event_floor = Self::event_sequence_floor(&*kv)?;
        zoftoken_engine::event::raise_sequence_floor(event_floor);
        let last = kv
            .last(Cf::Outbox)?
            .and_then(|(k, _)| k.as_slice().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
        let acked = kv
            .get(Cf::Meta, meta::OUTBOX_ACKED)?
            .and_then(|v| v.as_slice().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
        Ok(Store {
            kv,
            key,
            durability,
            next_seq: AtomicU64::new(last.max(acked) + 1),
            outbox_block: std::sync::Mutex::new((0, 0)),
            outbox_watermark: OutboxWatermark::new(last.max(acked)),
            health: Health::default(),
            event_floor: AtomicU64::new(event_floor),
        })
    }

    /// The stored schema version record, or `None` after initialising an empty database
    /// (schema version and master-key check). Servers of a shared database may start at the
    /// same moment on an empty one: the master-key check is compared and set, so exactly one
    /// initialises; the others wait for its schema version (a database with records but
    /// without a version for longer than [`INIT_WAIT`] is refused as damaged).
    fn schema_or_initialise(
        kv: &dyn KvStore,
        key: &MasterKey,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let started = std::time::Instant::now();
        loop {
            if let Some(v) = kv.get(Cf::Meta, meta::SCHEMA)? {
                return Ok(Some(v));
            }
            if Self::is_empty(kv)? {
                let check = key.seal(Cf::Meta, meta::KEY_CHECK, meta::KEY_CHECK_PLAINTEXT);
                if kv.compare_and_put(Cf::Meta, meta::KEY_CHECK, None, &check)? {
                    let mut b = WriteBatch::new();
                    b.put(Cf::Meta, meta::SCHEMA, SCHEMA_VERSION.to_be_bytes());
                    kv.write(&b, Durability::Fsync)?;
                    return Ok(None);
                }
                // Another process initialises it: its schema version follows.
            } else if started.elapsed() >= INIT_WAIT {
                return Err(corrupt(
                    Cf::Meta,
                    meta::SCHEMA,
                    "the database holds records but no schema version",
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The durable event-sequence floor (1 in a database that never numbered an event): every
    /// number handed out before is below it. Leaves a single floor record behind.
    fn event_sequence_floor(kv: &dyn KvStore) -> Result<u64, StoreError> {
        let (floor, keys) = Self::event_floors(kv)?;
        if keys.len() > 1 {
            let mut b = WriteBatch::new();
            for k in &keys {
                b.delete(Cf::Meta, k);
            }
            b.put(Cf::Meta, meta::event_floor_key(floor), []);
            kv.write(&b, Durability::Fsync)?;
        }
        Ok(floor)
    }

    /// The highest event-sequence floor and every floor record's key.
    fn event_floors(kv: &dyn KvStore) -> Result<(u64, Vec<Vec<u8>>), StoreError> {
        let mut keys = Vec::new();
        let mut floor = 1u64;
        let end = meta::event_floor_end();
        try_scan(kv, Cf::Meta, meta::EVENT_FLOOR, Some(&end), &mut |k, _| {
            floor = floor.max(
                meta::event_floor_of(k)
                    .ok_or_else(|| corrupt(Cf::Meta, k, "not an event sequence floor"))?,
            );
            keys.push(k.to_vec());
            Ok(true)
        })?;
        Ok((floor, keys))
    }

    /// After another writer of a shared database changed a token first: raises this
    /// process's event sequence numbers above every number the other writers have used, so
    /// that the token's next event here comes after theirs (see [`Store::follow`], which does
    /// the same from the floors it reads in the change feed).
    pub(crate) fn raise_to_shared_event_floor(&self) -> Result<(), StoreError> {
        let (floor, _) = Self::event_floors(&*self.kv)?;
        zoftoken_engine::event::raise_sequence_floor(floor);
        Ok(())
    }

    fn is_empty(kv: &dyn KvStore) -> Result<bool, StoreError> {
        for cf in Cf::ALL {
            if kv.last(cf)?.is_some() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn check_key(kv: &dyn KvStore, key: &MasterKey) -> Result<(), StoreError> {
        let sealed = kv.get(Cf::Meta, meta::KEY_CHECK)?.ok_or(corrupt(
            Cf::Meta,
            meta::KEY_CHECK,
            "master-key check value missing",
        ))?;
        match key.open(Cf::Meta, meta::KEY_CHECK, &sealed) {
            Some(p) if p.as_slice() == meta::KEY_CHECK_PLAINTEXT => Ok(()),
            _ => Err(StoreError::WrongMasterKey),
        }
    }
}
