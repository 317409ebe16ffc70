//! The reduction at the end of the chain: face and image counts and the f64 sum of
//! every encoding, mergeable in any grouping, so that partial sums made on different
//! nodes combine into the same mean.

use crate::job::{FaceJob, Status};
use serde::{Deserialize, Serialize};

/// Length of a face encoding.
pub const DIMS: usize = 128;

/// Counts and sums over some set of images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    /// Images seen.
    pub images: u64,
    /// Images with at least one face.
    pub images_with_faces: u64,
    /// Images in which no face was found.
    pub no_face: u64,
    /// Images skipped by a filter.
    pub skipped: u64,
    /// Images that failed.
    pub failed: u64,
    /// Faces encoded.
    pub faces: u64,
    /// Sum of every encoding, component by component, in f64.
    pub sum: Vec<f64>,
}

impl Default for Aggregate {
    fn default() -> Self {
        Aggregate {
            images: 0,
            images_with_faces: 0,
            no_face: 0,
            skipped: 0,
            failed: 0,
            faces: 0,
            sum: vec![0.0; DIMS],
        }
    }
}

impl Aggregate {
    /// Adds one finished image.
    pub fn add(&mut self, job: &FaceJob) {
        self.images += 1;
        match &job.status {
            Status::Active => {
                let encoded: Vec<&Vec<f64>> = job
                    .faces
                    .iter()
                    .map(|f| &f.encoding)
                    .filter(|e| e.len() == DIMS)
                    .collect();
                if !encoded.is_empty() {
                    self.images_with_faces += 1;
                }
                for e in encoded {
                    self.faces += 1;
                    for (s, v) in self.sum.iter_mut().zip(e) {
                        *s += v;
                    }
                }
            }
            Status::NoFace => self.no_face += 1,
            Status::Skipped(_) => self.skipped += 1,
            Status::Failed(_) | Status::NotRead(_) => self.failed += 1,
        }
    }

    /// Folds `other` into this one.
    pub fn merge(&mut self, other: &Aggregate) {
        self.images += other.images;
        self.images_with_faces += other.images_with_faces;
        self.no_face += other.no_face;
        self.skipped += other.skipped;
        self.failed += other.failed;
        self.faces += other.faces;
        for (s, v) in self.sum.iter_mut().zip(&other.sum) {
            *s += v;
        }
    }

    /// The mean encoding; `None` when no face was found.
    pub fn mean(&self) -> Option<Vec<f64>> {
        (self.faces > 0).then(|| self.sum.iter().map(|s| s / self.faces as f64).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{Face, FaceBox};

    fn job(encodings: &[f64]) -> FaceJob {
        let mut j = FaceJob::new(0, "x");
        j.faces = encodings
            .iter()
            .map(|&v| Face {
                detector: None,
                bbox: FaceBox {
                    top: 0,
                    right: 1,
                    bottom: 1,
                    left: 0,
                },
                landmarks: vec![],
                encoding: vec![v; DIMS],
            })
            .collect();
        j
    }

    #[test]
    fn mean_is_over_faces_and_merging_is_grouping_free() {
        let jobs = [job(&[0.5, -0.25]), job(&[1.0]), {
            let mut j = FaceJob::new(3, "y");
            j.status = Status::NoFace;
            j
        }];
        let mut whole = Aggregate::default();
        jobs.iter().for_each(|j| whole.add(j));
        let (mut a, mut b) = (Aggregate::default(), Aggregate::default());
        a.add(&jobs[0]);
        b.add(&jobs[1]);
        b.add(&jobs[2]);
        a.merge(&b);
        assert_eq!(a, whole);
        assert_eq!(
            (
                whole.images,
                whole.faces,
                whole.no_face,
                whole.images_with_faces
            ),
            (3, 3, 1, 2)
        );
        let mean = whole.mean().expect("faces");
        assert!((mean[0] - 1.25 / 3.0).abs() < 1e-15);
    }
}
