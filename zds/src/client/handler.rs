//! What the client hands each update to.

use std::fmt;
use std::future::Future;

use crate::Update;

/// The application side of a [`Client`](super::Client): applies each update and reports the outcome.
///
/// `Ok(())` is acknowledged to the agent; an error is sent back as a NACK carrying the
/// error's `Display` text. A failed add leaves the workload *pending* (the proxy is not
/// ready) and is retried; any other failure makes the client reconnect, which brings a
/// fresh snapshot.
///
/// Implemented for every `FnMut(Update) -> impl Future<Output = Result<(), E>>` closure,
/// so a closure is usually enough:
///
/// ```
/// # fn f() -> meshwire_zds::client::Client<impl meshwire_zds::client::Handler> {
/// let client = meshwire_zds::client::Client::new(meshwire_zds::client::ClientConfig::default(), |update: meshwire_zds::Update| async move {
///     match update {
///         meshwire_zds::Update::Add { workload, netns } => { /* open listeners in netns */ }
///         meshwire_zds::Update::Del { uid } => { /* drain the workload */ }
///         _ => {}
///     }
///     Ok::<(), std::io::Error>(())
/// });
/// # client }
/// ```
///
/// or, with state, a type implementing the trait with an `async fn`:
///
/// ```
/// use std::collections::HashMap;
/// use std::os::fd::OwnedFd;
///
/// #[derive(Default)]
/// struct Proxies {
///     running: HashMap<String, OwnedFd>,
/// }
///
/// impl meshwire_zds::client::Handler for Proxies {
///     type Error = std::io::Error;
///
///     async fn handle(&mut self, update: meshwire_zds::Update) -> Result<(), std::io::Error> {
///         match update {
///             meshwire_zds::Update::Add { workload, netns } => {
///                 self.running.insert(workload.uid, netns);
///             }
///             meshwire_zds::Update::Del { uid } => {
///                 self.running.remove(&uid);
///             }
///             _ => {}
///         }
///         Ok(())
///     }
/// }
///
/// let client = meshwire_zds::client::Client::new(meshwire_zds::client::ClientConfig::default(), Proxies::default());
/// # drop(client);
/// ```
///
/// Agents wait a few seconds (5 s upstream) for each answer and drop the connection past
/// that, so a handler should finish well within that time.
pub trait Handler: Send {
    /// The error a failed update reports; its `Display` text becomes the NACK text.
    type Error: fmt::Display + Send;

    /// Applies one update.
    fn handle(&mut self, update: Update) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

impl<Func, Fut, E> Handler for Func
where
    Func: FnMut(Update) -> Fut + Send,
    Fut: Future<Output = Result<(), E>> + Send,
    E: fmt::Display + Send,
{
    type Error = E;

    fn handle(&mut self, update: Update) -> impl Future<Output = Result<(), E>> + Send {
        self(update)
    }
}
