//! The crate-level error: module errors wrapped with their causes kept.

use crate::ledger::Reject;
use crate::reason::ReasonParseError;
use crate::store::{DurabilityParseError, PersistError, StoreError};
use crate::typed_data::SigningError;
use crate::verify::VoucherError;

/// Anything that can go wrong in this crate, as opposed to a protocol [`Reject`]ion that is
/// answered to the client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A store operation failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Persisting a commit failed.
    #[error(transparent)]
    Persist(#[from] PersistError),
    /// Signing with a local key failed.
    #[error("signing failed")]
    Signing(#[source] SigningError),
    /// A voucher could not be verified (bad signature or unreachable wallet).
    #[error(transparent)]
    Voucher(#[from] VoucherError),
    /// The ledger refused an operation that the caller expected to succeed.
    #[error("ledger refused: {0}")]
    Rejected(Reject),
    /// A reason string is not a known code.
    #[error(transparent)]
    ReasonParse(#[from] ReasonParseError),
    /// A durability mode string is not known.
    #[error(transparent)]
    DurabilityParse(#[from] DurabilityParseError),
    /// An escrow read or transaction failed.
    #[error(transparent)]
    Chain(#[from] crate::chain::escrow::ChainError),
}

impl From<Reject> for Error {
    fn from(r: Reject) -> Self {
        Self::Rejected(r)
    }
}

impl From<SigningError> for Error {
    fn from(e: SigningError) -> Self {
        Self::Signing(e)
    }
}

/// `Result` defaulting to the crate [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
