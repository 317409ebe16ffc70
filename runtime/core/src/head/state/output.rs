//! Worker output: lines a node's workers printed, passed on to their jobs' drivers
//! (Ray's `log_to_driver`).

use super::*;
use crate::protocol::WorkerOutput;

impl HeadState {
    /// Lines from `node`'s workers: each run goes to its job's driver, if it asked,
    /// with the node's registered IP (not whatever the node claims).
    pub(super) fn worker_output(&mut self, node: NodeId, runs: Vec<WorkerOutput>) {
        let ip = self.nodes.ip(node);
        let mut by_driver: HashMap<PeerId, Vec<WorkerOutput>> = HashMap::default();
        for mut run in runs {
            if let Some(driver) = self.jobs.output_driver(run.job) {
                run.ip = ip;
                by_driver.entry(driver).or_default().push(run);
            }
        }
        for (driver, runs) in by_driver {
            self.send(driver, FromHead::WorkerOutput(runs));
        }
    }

    /// A driver asks for its job's workers' output.
    pub(super) fn subscribe_output(&mut self, peer: PeerId) {
        match self.peers.job(peer) {
            Some(job) if self.jobs.driver(job) == Some(peer) => self.jobs.subscribe_output(job),
            _ => tracing::warn!(
                ?peer,
                "an output subscription from a peer that is not a driver; ignored"
            ),
        }
    }
}
