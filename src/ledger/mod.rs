//! The channel ledger: pure logic, in memory, no I/O and no `async`.
//!
//! | file | holds |
//! |---|---|
//! | `channel.rs` | [`ChannelRecord`], [`OnchainState`], [`ChannelSnapshot`]; the voucher rules |
//! | `book.rs` | [`Ledger`]: sharded map, reserve, chain hooks, claimable snapshot |
//! | `reservation.rs` | [`Reservation`] → [`StagedCommit`] → [`Receipt`] (RAII release) |
//! | `reject.rs` | [`Reject`]: a reason code plus context, as data |
//! | `shards.rs` | the keyed hasher and shard selection |

mod book;
mod channel;
mod reject;
mod reservation;
mod shards;

pub use book::{DEFAULT_SHARDS, Ledger};
pub use channel::{ChannelRecord, ChannelSnapshot, OnchainState, RefundMarks};
pub use reject::{Detail, LastVoucher, Mismatch, Reject};
pub use reservation::{
    Claimable, CommitRefused, Receipt, Reservation, StagedCommit, StagedRenewal,
};

// The guards live across the handler's `.await`s in the server: they must be `Send`.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Ledger>();
    send_sync::<Reservation>();
    send_sync::<StagedCommit>();
    send_sync::<Reject>();
};
