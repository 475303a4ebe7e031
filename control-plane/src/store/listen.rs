//! Hearing of the versions other control-plane replicas commit: Postgres `LISTEN/NOTIFY`.
//!
//! Every commit on Postgres sends its version on [`VERSION_CHANNEL`] from inside its
//! transaction, so the notification arrives only once the version is visible. Notifications
//! sent while a listener is disconnected are lost: a caller reads the head again after every
//! (re)connect, which is why [`VersionListener::next`] reports a lost connection.

use std::time::Duration;

use sqlx::postgres::PgListener;

use super::{Backend, Result, Store, StoreError, VERSION_CHANNEL};

/// How long opening the listener's connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection that hears every committed version.
pub struct VersionListener {
    inner: PgListener,
}

impl std::fmt::Debug for VersionListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VersionListener").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens a listener for committed versions. `None` on SQLite: an embedded store has one
    /// control plane, so nothing else commits to it.
    pub async fn listen_versions(&self) -> Result<Option<VersionListener>> {
        if self.backend != Backend::Postgres {
            return Ok(None);
        }
        let connect = async {
            let mut listener = PgListener::connect(&self.url).await?;
            // Report a lost connection instead of reconnecting behind the caller's back: the
            // caller must read the head again, since notifications were lost meanwhile.
            listener.eager_reconnect(false);
            listener.listen(VERSION_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(inner)) => Ok(Some(VersionListener { inner })),
            Ok(Err(error)) => Err(StoreError::classify(error)),
            Err(_) => Err(StoreError::Unavailable(
                "opening the notification listener timed out".to_owned(),
            )),
        }
    }
}

impl VersionListener {
    /// Waits for the next committed version. `Ok(None)`: the connection was lost, and with
    /// it any notification sent meanwhile; drop this listener and open another.
    pub async fn next(&mut self) -> Result<Option<u64>> {
        match self.inner.try_recv().await {
            // A payload that is not a number still means "a version was committed".
            Ok(Some(notification)) => Ok(Some(notification.payload().parse().unwrap_or(0))),
            Ok(None) => Ok(None),
            Err(error) => Err(StoreError::classify(error)),
        }
    }
}
