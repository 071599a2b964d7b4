//! One long-lived thread per namespace that runs jobs (making sockets) inside it.

use std::fmt;
use std::io;
use std::os::fd::AsFd;
use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc;
use std::thread;

use super::{NetNs, NsId, enter};
use crate::error::Error;

/// A job for the namespace thread.
type Job = Box<dyn FnOnce() + Send>;

/// A dedicated OS thread that lives inside one network namespace and runs short
/// blocking jobs there, one after the other, for async callers.
///
/// Where [`NetNs::run_async`] starts a new thread for every call, an `NsThread` is
/// started once (for example when a pod is added) and serves every socket made in that
/// namespace afterwards, so a proxy has one extra thread per pod, whatever its
/// connection rate. Dropping the handle ends the thread: queued jobs still run, then
/// the thread leaves and the drop waits for it (jobs are expected to be short, like
/// creating a socket).
///
/// Use it wherever a [`RunIn`] is taken, such as
/// [`socket::bind_listener_in`](crate::socket::bind_listener_in) and
/// [`socket::connect_in`](crate::socket::connect_in).
pub struct NsThread {
    id: NsId,
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl NsThread {
    /// Starts the thread and moves it into `ns`. Blocks until the thread is inside
    /// (a thread start and one `setns`), and fails if it cannot get there (for example
    /// without `CAP_SYS_ADMIN`).
    pub fn spawn(ns: &NetNs) -> Result<Self, Error> {
        let fd = ns.fd.try_clone().map_err(Error::Thread)?;
        let id = ns.id;
        let (jobs, queue) = mpsc::channel::<Job>();
        let (entered_tx, entered_rx) = mpsc::sync_channel(1);
        let thread = thread::Builder::new()
            .name(format!("netns-{}", id.ino))
            .spawn(move || {
                let entered = enter(fd.as_fd(), id);
                drop(fd);
                let inside = entered.is_ok();
                let _ = entered_tx.send(entered);
                if inside {
                    // Ends when the handle is dropped (the sender goes away).
                    while let Ok(job) = queue.recv() {
                        job();
                    }
                }
            })
            .map_err(Error::Thread)?;
        let entered = entered_rx.recv().unwrap_or_else(|_| {
            Err(Error::Thread(io::Error::other(
                "namespace thread ended before entering the namespace",
            )))
        });
        if let Err(e) = entered {
            let _ = thread.join();
            return Err(e);
        }
        Ok(Self {
            id,
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// The namespace the thread runs in.
    pub fn id(&self) -> NsId {
        self.id
    }

    /// Runs `f` on the namespace thread and resolves to its result. Jobs run one at a
    /// time, in the order they were queued. A panic in `f` is propagated to the task
    /// awaiting the future (the thread itself keeps serving).
    pub async fn run<T, F>(&self, f: F) -> Result<T, Error>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            // The receiver is gone only when the caller stopped waiting.
            let _ = tx.send(panic::catch_unwind(AssertUnwindSafe(f)));
        });
        let stopped = || Error::Thread(io::Error::other("namespace thread has stopped"));
        self.jobs
            .as_ref()
            .ok_or_else(stopped)?
            .send(job)
            .map_err(|_| stopped())?;
        match rx.await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(payload)) => panic::resume_unwind(payload),
            Err(_) => Err(stopped()),
        }
    }
}

impl Drop for NsThread {
    fn drop(&mut self) {
        // Closing the queue ends the thread's loop once the queued jobs ran.
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take()
            && thread.thread().id() != thread::current().id()
        {
            let _ = thread.join();
        }
    }
}

impl fmt::Debug for NsThread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NsThread")
            .field("id", &self.id)
            .field("running", &self.jobs.is_some())
            .finish()
    }
}

/// Something that runs blocking jobs inside a network namespace for async callers,
/// never on an async worker thread: a [`NetNs`] (a new short-lived thread per job) or
/// an [`NsThread`] (one long-lived thread).
pub trait RunIn: Sync {
    /// Runs `f` inside the namespace and resolves to its result; a panic in `f` is
    /// propagated to the caller.
    fn run_in<T, F>(&self, f: F) -> impl Future<Output = Result<T, Error>> + Send
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static;
}

impl RunIn for NetNs {
    fn run_in<T, F>(&self, f: F) -> impl Future<Output = Result<T, Error>> + Send
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.run_async(f)
    }
}

impl RunIn for NsThread {
    fn run_in<T, F>(&self, f: F) -> impl Future<Output = Result<T, Error>> + Send
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.run(f)
    }
}
