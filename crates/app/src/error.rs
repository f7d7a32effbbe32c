//! The application's error: the library's errors, plus what only the binary can fail at.

/// Anything a command of the `x402-upto` binary can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The engine failed (store, signing, chain, ledger).
    #[error(transparent)]
    Engine(#[from] x402_upto::Error),
    /// The demo failed (the step is in the message).
    #[error(transparent)]
    Demo(#[from] crate::demo::DemoError),
    /// A command failed (message for the operator).
    #[error("{0}")]
    Command(String),
    /// The async runtime could not start.
    #[error("could not start the tokio runtime")]
    Runtime(#[source] std::io::Error),
}

/// The application's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Library errors reach `?` in the binary through the library's own `Error`.
macro_rules! through_engine {
    ($($t:ty),* $(,)?) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Self::Engine(x402_upto::Error::from(e))
            }
        }
    )*};
}

through_engine!(
    x402_upto::store::StoreError,
    x402_upto::store::PersistError,
    x402_upto::typed_data::SigningError,
    x402_upto::Reject,
    x402_upto::chain::escrow::ChainError,
    x402_upto::verify::VoucherError,
);
