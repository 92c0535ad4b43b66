//! Desktop notifications: best effort, behind a timeout, never blocking the daemon.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long one notification may take before it is given up.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends desktop notifications over the session bus when enabled.
pub struct Desktop {
    enabled: AtomicBool,
    /// Set after the first failure was logged, so an absent bus is reported once, not at every violation.
    failure_logged: AtomicBool,
}

impl Desktop {
    pub fn new(enabled: bool) -> Desktop {
        Desktop { enabled: AtomicBool::new(enabled), failure_logged: AtomicBool::new(false) }
    }

    /// Turns notifications on or off (the configuration was reloaded).
    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, std::sync::atomic::Ordering::Relaxed);
    }

    /// Shows a notification in the background. Failures (no session bus, no notification server) are logged
    /// once as a warning and otherwise ignored.
    pub fn notify(self: &std::sync::Arc<Self>, summary: String, body: String) {
        if !self.enabled.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let shown = tokio::time::timeout(
                NOTIFY_TIMEOUT,
                notify_rust::Notification::new()
                    .appname("dreamerd")
                    .summary(&summary)
                    .body(&body)
                    .icon("dialog-warning")
                    .show_async(),
            )
            .await;
            let error = match shown {
                Ok(Ok(_)) => {
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
