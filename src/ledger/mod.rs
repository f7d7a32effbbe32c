//! The channel ledger: pure logic, in memory, no I/O and no `async`.
//!
//! | file | holds |
//! |---|---|
//! | `channel.rs` | the data: [`ChannelRecord`], [`OnchainState`], [`RefundMarks`], and the views [`ChannelSnapshot`], [`LastVoucher`], [`Claimable`] |
//! | `rules.rs` | the voucher rules over a record (`check_voucher`, `check_extension`, `check_refund_voucher`) |
//! | `reject.rs` | [`Reject`]: a reason code plus context, as data |
//! | `book.rs` | [`Ledger`]: sharded map, chain hooks, claimable snapshot |
//! | `reservation.rs` | [`Ledger::reserve`] → [`Reservation`] → [`StagedCommit`] → [`Receipt`] (RAII release) |
//! | `freshness.rs` | [`Freshness`]: how old a channel's on-chain mirror may be when served on |
//! | `shards.rs` | the keyed hasher and shard selection |

mod book;
mod channel;
mod freshness;
mod reject;
mod reservation;
mod rules;
mod shards;

pub use book::{DEFAULT_SHARDS, Ledger};
pub use channel::{
    ChannelRecord, ChannelSnapshot, Claimable, LastVoucher, OnchainState, RefundMarks,
};
pub use freshness::Freshness;
pub use reject::{Detail, Mismatch, Reject};
pub use reservation::{CommitRefused, Receipt, Reservation, StagedCommit, StagedRenewal};

// The guards live across the handler's `.await`s in the server: they must be `Send`.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Ledger>();
    send_sync::<Reservation>();
    send_sync::<StagedCommit>();
    send_sync::<Reject>();
};
