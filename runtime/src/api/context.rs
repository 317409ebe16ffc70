//! The process-wide connection to the cluster, set once by `init`.

use rayish_core::core_worker::CoreWorker;
use std::sync::{Arc, OnceLock};

static CURRENT: OnceLock<Arc<CoreWorker>> = OnceLock::new();

/// The core worker, if `init` has run.
pub(crate) fn try_current() -> Option<&'static Arc<CoreWorker>> {
    CURRENT.get()
}

/// Installs the core worker; false if one was already installed.
pub(crate) fn install(cw: Arc<CoreWorker>) -> bool {
    CURRENT.set(cw).is_ok()
}

/// The core worker, starting a local cluster first if `init` has not run (as Ray does).
pub(crate) fn current() -> Result<&'static Arc<CoreWorker>, super::Error> {
    if let Some(cw) = CURRENT.get() {
        return Ok(cw);
    }
    super::init(super::Config::default())?;
    CURRENT
        .get()
        .ok_or_else(|| super::Error::Init("initialization did not complete".into()))
}
