//! The signer pool's queue: two priority classes in front of the signing
//! threads. Interactive work (a client waiting on its request) is taken
//! before background work (workload SVID issuance and rotation, the
//! certificate-request worker), so a rotation wave of thousands of SVIDs
//! delays an interactive request by at most the signatures already in
//! progress, not by the wave.
//!
//! Background work is never starved: after [`INTERACTIVE_RUN`] interactive
//! jobs in a row taken while background work waited, the next job is a
//! background one. Under a steady interactive overload background work
//! still gets one signature in `INTERACTIVE_RUN + 1`, so a background job
//! waits at most `INTERACTIVE_RUN + 1` signatures for each job ahead of it
//! in its own class. A bound by count rather than by age keeps the order a
//! pure function of the queue (testable without clocks), and an
//! interactive request's extra wait is at most one background signature in
//! `INTERACTIVE_RUN + 1`.
//!
//! Each class has its own bound (`token.queue_depth`): a wave that fills
//! the background class is told `Busy` (and retries), and never makes an
//! interactive request `Busy`.

use std::{
    collections::VecDeque,
    sync::{Condvar, Mutex, MutexGuard, PoisonError},
};

/// Interactive jobs taken in a row while background work waits, before one
/// background job is taken.
pub const INTERACTIVE_RUN: usize = 8;

/// Which class a signature belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// A caller is waiting on it: a request over the API socket, a
    /// JWT-SVID, a CRL, a start-up or watchdog probe.
    Interactive,
    /// Work that can wait its turn: workload SVIDs, the certificate-request
    /// worker.
    Background,
}

/// Why a job was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError<T> {
    /// The job's class holds `capacity` jobs already.
    Full(T),
    /// The queue was closed (the pool is shutting down).
    Closed(T),
}

struct State<T> {
    interactive: VecDeque<T>,
    background: VecDeque<T>,
    /// Interactive jobs taken in a row while background work waited.
    run: usize,
    closed: bool,
}

/// A bounded two-class queue; `pop` blocks (for the signing threads).
pub struct JobQueue<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
    capacity: usize,
}

impl<T> JobQueue<T> {
    /// A queue holding up to `capacity` jobs of each class.
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                interactive: VecDeque::new(),
                background: VecDeque::new(),
                run: 0,
                closed: false,
            }),
            ready: Condvar::new(),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A job never panics while the lock is held: the state stays whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `job` without waiting.
    pub fn try_push(&self, priority: Priority, job: T) -> Result<(), PushError<T>> {
        let mut s = self.lock();
        if s.closed {
            return Err(PushError::Closed(job));
        }
        let lane = match priority {
            Priority::Interactive => &mut s.interactive,
            Priority::Background => &mut s.background,
        };
        if lane.len() >= self.capacity {
            return Err(PushError::Full(job));
        }
        lane.push_back(job);
        drop(s);
        self.ready.notify_one();
        Ok(())
    }

    /// The next job, waiting for one; `None` once the queue is closed and
    /// empty (what was queued before [`JobQueue::close`] is still handed out).
    pub fn pop(&self) -> Option<T> {
        let mut s = self.lock();
        loop {
            if let Some(job) = take(&mut s) {
                return Some(job);
            }
            if s.closed {
                return None;
            }
            s = self.ready.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Refuses new jobs and wakes every waiting thread.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// Jobs waiting, interactive and background.
    pub fn waiting(&self) -> (usize, usize) {
        let s = self.lock();
        (s.interactive.len(), s.background.len())
    }
}

/// Interactive first, except after [`INTERACTIVE_RUN`] of them in a row
/// while background work waited.
fn take<T>(s: &mut State<T>) -> Option<T> {
    if s.background.is_empty() {
        s.run = 0;
        return s.interactive.pop_front();
    }
    if s.run < INTERACTIVE_RUN
        && let Some(job) = s.interactive.pop_front()
    {
        s.run += 1;
        return Some(job);
    }
    s.run = 0;
    s.background.pop_front()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::{sync::Arc, time::Duration};

    use super::{Priority::*, *};

    fn drain(q: &JobQueue<u32>) -> Vec<u32> {
        q.close();
        std::iter::from_fn(|| q.pop()).collect()
    }

    #[test]
    fn interactive_work_queued_behind_background_work_goes_first() {
        let q = JobQueue::new(100);
        for n in 100..105 {
            q.try_push(Background, n).unwrap();
        }
        q.try_push(Interactive, 1).unwrap();
        q.try_push(Interactive, 2).unwrap();
        q.try_push(Background, 105).unwrap();
        q.try_push(Interactive, 3).unwrap();
        assert_eq!(drain(&q), [1, 2, 3, 100, 101, 102, 103, 104, 105]);
    }

    #[test]
    fn each_class_keeps_its_own_order() {
        let q = JobQueue::new(100);
        for n in 0..5 {
            q.try_push(Interactive, n).unwrap();
        }
        assert_eq!(drain(&q), [0, 1, 2, 3, 4]);
        let q = JobQueue::new(100);
        for n in 0..5 {
            q.try_push(Background, n).unwrap();
        }
        assert_eq!(drain(&q), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn background_work_gets_one_turn_after_a_run_of_interactive_work() {
        let q = JobQueue::new(1000);
        q.try_push(Background, 1000).unwrap();
        q.try_push(Background, 1001).unwrap();
        let interactive = 3 * INTERACTIVE_RUN as u32;
        for n in 0..interactive {
            q.try_push(Interactive, n).unwrap();
        }
        let order = drain(&q);
        let at = |x: u32| order.iter().position(|&o| o == x).unwrap();
        assert_eq!(at(1000), INTERACTIVE_RUN);
        assert_eq!(at(1001), 2 * INTERACTIVE_RUN + 1);
        assert_eq!(order.len(), interactive as usize + 2);
    }

    #[test]
    fn a_steady_stream_of_interactive_work_never_starves_background_work() {
        // Interactive work arrives as fast as it is taken; background work
        // still moves, one job in every INTERACTIVE_RUN + 1.
        let q = JobQueue::new(1000);
        for n in 0..10 {
            q.try_push(Background, 1000 + n).unwrap();
        }
        let mut background = 0;
        for next in 0..10 * (INTERACTIVE_RUN as u32 + 1) {
            q.try_push(Interactive, next).unwrap();
            if q.pop().unwrap() >= 1000 {
                background += 1;
            }
        }
        assert_eq!(background, 10);
    }

    #[test]
    fn a_run_counts_only_while_background_work_waits() {
        let q = JobQueue::new(100);
        // Interactive work alone does not use up background's turn.
        for n in 0..(2 * INTERACTIVE_RUN as u32) {
            q.try_push(Interactive, n).unwrap();
            assert_eq!(q.pop(), Some(n));
        }
        q.try_push(Background, 500).unwrap();
        q.try_push(Interactive, 1).unwrap();
        assert_eq!(q.pop(), Some(1));
    }

    #[test]
    fn each_class_has_its_own_bound() {
        let q = JobQueue::new(2);
        q.try_push(Background, 1).unwrap();
        q.try_push(Background, 2).unwrap();
        assert_eq!(q.try_push(Background, 3), Err(PushError::Full(3)));
        // A full background class leaves room for interactive work.
        q.try_push(Interactive, 4).unwrap();
        q.try_push(Interactive, 5).unwrap();
        assert_eq!(q.try_push(Interactive, 6), Err(PushError::Full(6)));
        assert_eq!(q.waiting(), (2, 2));
        assert_eq!(q.pop(), Some(4));
        q.try_push(Interactive, 7).unwrap();
    }

    #[test]
    fn close_hands_out_what_was_queued_then_ends() {
        let q = JobQueue::new(10);
        q.try_push(Background, 1).unwrap();
        q.try_push(Interactive, 2).unwrap();
        q.close();
        assert_eq!(q.try_push(Interactive, 3), Err(PushError::Closed(3)));
        assert_eq!(q.pop(), Some(2));
        assert_eq!(q.pop(), Some(1));
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn waiting_threads_get_jobs_and_wake_on_close() {
        let q = Arc::new(JobQueue::new(10));
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let q = q.clone();
                std::thread::spawn(move || std::iter::from_fn(|| q.pop()).collect::<Vec<u32>>())
            })
            .collect();
        std::thread::sleep(Duration::from_millis(20));
        for n in 0..6 {
            q.try_push(if n % 2 == 0 { Interactive } else { Background }, n)
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
        q.close();
        let mut got: Vec<u32> = workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        got.sort_unstable();
        assert_eq!(got, [0, 1, 2, 3, 4, 5]);
    }
}
