//! A changelog replay on two threads: one reads records (from a broker, a file, memory) and
//! decodes them into batches, the calling thread applies the batches to the engine, in order.
//!
//! The applying thread does exactly what [`Replayer::apply`] of each record in turn would (see
//! [`crate::state::batch`]); the reader only decodes, which depends on nothing but the record.
//! Batches go through a bounded channel (the reader never runs more than [`IN_FLIGHT`] batches
//! ahead, so memory stays bounded whatever the partition's size) and come back empty to be
//! reused.

use std::sync::mpsc;

use super::batch::DecodedBatch;
use super::changelog::Replayer;
use super::codec::Shape;

/// Records per batch: large enough that the channel's cost per batch is negligible, small
/// enough that a batch's decoded states (about 1 kB per user with the shipped model) stay in
/// cache between the two threads.
pub const BATCH_RECORDS: usize = 512;
/// Batches decoded and not yet applied, at most.
pub const IN_FLIGHT: usize = 8;

/// The reading side's handle: records pushed here are decoded and handed to the applier.
pub struct BatchWriter {
    shape: Shape,
    current: DecodedBatch,
    full: mpsc::SyncSender<DecodedBatch>,
    spare: mpsc::Receiver<DecodedBatch>,
}

/// The applier is gone (it only stops early by panicking): nothing more can be applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the applying thread stopped")]
pub struct ApplierGone;

impl BatchWriter {
    /// Decode the next record of the partition into the current batch, handing the batch over
    /// when full.
    pub fn push(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), ApplierGone> {
        self.current.push(&self.shape, key, value);
        if self.current.len() >= BATCH_RECORDS {
            self.flush()?;
        }
        Ok(())
    }

    /// Hand over the records decoded so far (a reader waiting on its source calls this so the
    /// applier is not left idle meanwhile).
    pub fn flush(&mut self) -> Result<(), ApplierGone> {
        if self.current.is_empty() {
            return Ok(());
        }
        let mut next = self.spare.try_recv().unwrap_or_default();
        next.clear();
        let full = std::mem::replace(&mut self.current, next);
        self.full.send(full).map_err(|_| ApplierGone)
    }
}

/// Run `read` on a thread of its own, pushing the partition's records in log order, while this
/// thread applies them to `replayer`. `applied` is told how many records each batch held, once
/// applied. Returns `read`'s result once every batch handed over is applied (after an error,
/// the records of the batch being filled are not).
pub fn replay<E, R>(replayer: &mut Replayer<'_>, read: R, mut applied: impl FnMut(u64)) -> Result<(), E>
where
    E: Send + From<ApplierGone>,
    R: FnOnce(&mut BatchWriter) -> Result<(), E> + Send,
{
    let (full_tx, full_rx) = mpsc::sync_channel::<DecodedBatch>(IN_FLIGHT);
    let (spare_tx, spare_rx) = mpsc::channel::<DecodedBatch>();
    let mut writer =
        BatchWriter { shape: *replayer.shape(), current: DecodedBatch::default(), full: full_tx, spare: spare_rx };
    std::thread::scope(|s| {
        let reader = std::thread::Builder::new()
            .name("changelog-read".into())
            .spawn_scoped(s, move || {
                read(&mut writer)?;
                writer.flush()?;
                Ok(())
                // `writer` (the sending side) is dropped here: the applier's loop ends.
            })
            .map_err(|_| ApplierGone);
        let reader = match reader {
            Ok(r) => r,
            // No thread to be had: the caller's error, as if the applier had gone.
            Err(e) => return Err(E::from(e)),
        };
        for mut batch in full_rx.iter() {
            replayer.apply_batch(&batch);
            applied(batch.len() as u64);
            batch.clear();
            // The reader may have finished: then the batch is simply dropped.
            let _ = spare_tx.send(batch);
        }
        match reader.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum TestError {
        Gone,
        Source,
    }

    impl From<ApplierGone> for TestError {
        fn from(_: ApplierGone) -> Self {
            TestError::Gone
        }
    }

    fn engine() -> crate::engine::Engine {
        let model = crate::model::ModelArtifact::from_weights(
            crate::features::FeatureSpec::default(),
            "pipelined-1",
            &[("recency", 1.0)],
            -2.0,
            vec![],
        )
        .expect("model");
        crate::engine::Engine::new(&model, Default::default(), Default::default())
    }

    #[test]
    fn a_reader_error_is_returned_after_what_it_pushed_is_applied() {
        let mut e = engine();
        let mut r = Replayer::new(&mut e);
        let mut seen = 0;
        let res = replay(
            &mut r,
            |w: &mut BatchWriter| {
                for i in 0..(BATCH_RECORDS * 2 + 3) {
                    w.push(format!("u{i}").as_bytes(), None)?;
                }
                Err(TestError::Source)
            },
            |n| seen += n,
        );
        assert_eq!(res, Err(TestError::Source));
        assert_eq!(seen, (BATCH_RECORDS * 2) as u64, "full batches were applied, the partial one was not sent");
        assert_eq!(r.users, (BATCH_RECORDS * 2) as u64);
    }
}
