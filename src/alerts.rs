//! Desktop notifications: best effort, behind a timeout, never blocking the daemon.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long one notification may take before it is given up.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends desktop notifications over the session bus when enabled.
pub struct Desktop {
    enabled: AtomicBool,
    /// Set after the first failure was logged, so an absent bus is reported once, not at every violation.
    failure_logged: AtomicBool,
    /// The notification server's id of the notification shown last under each key (a burst of changes in one
    /// project): the next one under that key replaces it (`replaces_id`) instead of stacking up. Held while a
    /// notification is being shown, so an update never overtakes the notification it replaces.
    shown: Arc<tokio::sync::Mutex<HashMap<String, u32>>>,
}

impl Desktop {
    pub fn new(enabled: bool) -> Desktop {
        Desktop {
            enabled: AtomicBool::new(enabled),
            failure_logged: AtomicBool::new(false),
            shown: Arc::default(),
        }
    }

    /// Forgets the notification of `key`: the next one under it is a new notification.
    pub fn close_key(&self, key: &str) {
        let shown = self.shown.clone();
        let key = key.to_string();
        tokio::spawn(async move {
            shown.lock().await.remove(&key);
        });
    }

    /// Turns notifications on or off (the configuration was reloaded).
    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, std::sync::atomic::Ordering::Relaxed);
    }

    /// Shows a notification in the background. Failures (no session bus, no notification server) are logged
    /// once as a warning and otherwise ignored.
    pub fn notify(self: &std::sync::Arc<Self>, summary: String, body: String) {
        self.notify_as(None, summary, body);
    }

    /// [`Desktop::notify`], replacing the notification last shown under `key` while there is one.
    pub fn notify_as(self: &std::sync::Arc<Self>, key: Option<&str>, summary: String, body: String) {
        if !self.enabled.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let this = self.clone();
        let key = key.map(str::to_string);
        tokio::spawn(async move {
            let mut ids = this.shown.lock().await;
            let mut notification = notify_rust::Notification::new();
            notification.appname("dreamerd").summary(&summary).body(&body).icon("dialog-warning");
            if let Some(id) = key.as_ref().and_then(|k| ids.get(k)) {
                notification.id(*id);
            }
            let shown = tokio::time::timeout(NOTIFY_TIMEOUT, notification.show_async()).await;
            let error = match shown {
                Ok(Ok(handle)) => {
                    if let Some(key) = key {
                        ids.insert(key, handle.id());
                    }
                    tracing::debug!(%summary, "desktop notification shown");
                    return;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {}s", NOTIFY_TIMEOUT.as_secs()),
            };
            if !this.failure_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    %error,
                    "desktop notifications are unavailable (no session bus or notification server); \
                     warnings still go to the log. Set notify.desktop = false to silence this"
                );
            } else {
                tracing::debug!(%error, "desktop notification failed");
            }
        });
    }
}
