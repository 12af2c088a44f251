//! A redb storage backend that can be told to fail, so that the gateway's answer to a failing
//! disk (full, or broken) can be tested for real: through redb, the log and the HTTP listener.

use std::{
    fs::File,
    io,
    ops::Bound,
    sync::{
        Arc, Condvar, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
};

use redb::{BackendError, StorageBackend, backends::FileBackend};

/// A switch shared by every backend made with it. While failing, writes and syncs fail with an
/// I/O error as a full disk would; while only syncs fail, data reaches the file (the operating
/// system's cache) but is never made durable, as with a disk that fails on flush. It also counts
/// syncs, and can hold them, so that a test sees how many commits a batch of appends took.
#[derive(Debug, Clone, Default)]
pub struct FaultSwitch(Arc<Switches>);

#[derive(Debug, Default)]
struct Switches {
    failing: AtomicBool,
    failing_syncs: AtomicBool,
    syncs: AtomicU64,
    held: Mutex<bool>,
    released: Condvar,
    waiting: AtomicUsize,
}

impl FaultSwitch {
    /// A switch that is off.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes writes and syncs fail (`true`) or succeed again (`false`).
    pub fn set_failing(&self, failing: bool) {
        self.0.failing.store(failing, Ordering::SeqCst);
    }

    /// Makes syncs alone fail (`true`) or succeed again (`false`).
    pub fn set_failing_syncs(&self, failing: bool) {
        self.0.failing_syncs.store(failing, Ordering::SeqCst);
    }

    /// Syncs that succeeded so far.
    pub fn syncs(&self) -> u64 {
        self.0.syncs.load(Ordering::SeqCst)
    }

    /// Makes syncs wait (`true`) until they are let go (`false`).
    pub fn hold_syncs(&self, hold: bool) {
        *self.0.held.lock().unwrap_or_else(PoisonError::into_inner) = hold;
        if !hold {
            self.0.released.notify_all();
        }
    }

    /// Syncs waiting now because syncs are held.
    pub fn held_syncs(&self) -> usize {
        self.0.waiting.load(Ordering::SeqCst)
    }

    fn check(&self) -> io::Result<()> {
        if self.0.failing.load(Ordering::SeqCst) {
            Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "injected storage fault",
            ))
        } else {
            Ok(())
        }
    }

    fn sync(&self, sync: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        {
            let held = self.0.held.lock().unwrap_or_else(PoisonError::into_inner);
            if *held {
                self.0.waiting.fetch_add(1, Ordering::SeqCst);
                let released = self
                    .0
                    .released
                    .wait_while(held, |held| *held)
                    .unwrap_or_else(PoisonError::into_inner);
                drop(released);
                self.0.waiting.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.check()?;
        if self.0.failing_syncs.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected sync fault"));
        }
        sync()?;
        self.0.syncs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A [`FileBackend`] that fails, counts and holds as its [`FaultSwitch`] says.
#[derive(Debug)]
pub struct FaultyBackend {
    inner: FileBackend,
    switch: FaultSwitch,
}

impl FaultyBackend {
    /// Wraps a file.
    pub fn new(file: File, switch: FaultSwitch) -> Result<Self, redb::DatabaseError> {
        Ok(Self {
            inner: FileBackend::new(file)?,
            switch,
        })
    }
}

impl StorageBackend for FaultyBackend {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.switch.check()?;
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.switch.sync(|| self.inner.sync_data())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.switch.check()?;
        self.inner.write(offset, data)
    }

    fn close(&self) -> io::Result<()> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}
