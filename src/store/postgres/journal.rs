//! The claim journal in `x402_claim_journal`, behind the synchronous [`JournalStore`] trait:
//! the settlement task calls it between chain calls, and a journal write must be committed
//! before its batch is sent. A thread of its own with its own connection runs the queries,
//! so a caller on any runtime (or none) can block on the answer.

use std::sync::mpsc as std_mpsc;

use tokio_postgres::Config;

use super::link::{Link, unavailable};
use super::writer::as_i64;
use crate::store::journal::{JournalEntry, JournalStore};
use crate::store::{PostgresStore, StoreError, codec};

enum Op {
    Put(u64, Vec<u8>),
    Get(u64),
    Remove(u64),
    All,
    Last,
    Count,
}

enum Answer {
    Done,
    Entry(Option<JournalEntry>),
    Entries(Vec<JournalEntry>),
    Id(Option<u64>),
    Count(usize),
}

type Request = (Op, std_mpsc::Sender<Result<Answer, StoreError>>);

/// The journal thread's mailbox.
pub(super) struct Bridge {
    requests: parking_lot::Mutex<std_mpsc::Sender<Request>>,
}

impl Bridge {
    pub(super) fn start(config: Config) -> Result<Self, StoreError> {
        let (tx, rx) = std_mpsc::channel::<Request>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Unavailable(format!("journal runtime: {e}")))?;
        std::thread::Builder::new()
            .name("x402-pg-journal".into())
            .spawn(move || {
                let link = Link::new(config, false);
                while let Ok((op, reply)) = rx.recv() {
                    let _ = reply.send(runtime.block_on(run(&link, op)));
                }
            })
            .map_err(|e| StoreError::Unavailable(format!("journal thread: {e}")))?;
        Ok(Self {
            requests: parking_lot::Mutex::new(tx),
        })
    }

    fn ask(&self, op: Op) -> Result<Answer, StoreError> {
        let (reply, answer) = std_mpsc::channel();
        self.requests
            .lock()
            .send((op, reply))
            .map_err(|_| StoreError::FlusherStopped)?;
        blocking(|| answer.recv()).map_err(|_| StoreError::FlusherStopped)?
    }
}

/// Runs `f`, telling a multi-threaded tokio runtime first that this thread blocks.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

async fn run(link: &Link, op: Op) -> Result<Answer, StoreError> {
    let conn = match link.conn().await {
        Ok(c) => c,
        Err(e) => return Err(e),
    };
    let c = &conn.client;
    let decode = |id: i64, bytes: &[u8]| codec::decode_entry(&(id as u64).to_be_bytes(), bytes);
    match op {
        Op::Put(id, bytes) => {
            c.execute(
                "INSERT INTO x402_claim_journal (id, entry) VALUES ($1, $2) \
                 ON CONFLICT (id) DO UPDATE SET entry = EXCLUDED.entry",
                &[&as_i64(id), &bytes],
            )
            .await
            .map_err(unavailable("writing a journal entry"))?;
            Ok(Answer::Done)
        }
        Op::Get(id) => {
            let row = c
                .query_opt(
                    "SELECT id, entry FROM x402_claim_journal WHERE id = $1",
                    &[&as_i64(id)],
                )
                .await
                .map_err(unavailable("reading a journal entry"))?;
            let entry = row.map(|r| decode(r.get(0), r.get(1))).transpose()?;
            Ok(Answer::Entry(entry))
        }
        Op::Remove(id) => {
            c.execute(
                "DELETE FROM x402_claim_journal WHERE id = $1",
                &[&as_i64(id)],
            )
            .await
            .map_err(unavailable("removing a journal entry"))?;
            Ok(Answer::Done)
        }
        Op::All => {
            let rows = c
                .query("SELECT id, entry FROM x402_claim_journal ORDER BY id", &[])
                .await
                .map_err(unavailable("reading the journal"))?;
            let entries = rows
                .iter()
                .map(|r| decode(r.get(0), r.get(1)))
                .collect::<Result<_, _>>()?;
            Ok(Answer::Entries(entries))
        }
        Op::Last => {
            let row = c
                .query_one("SELECT max(id) FROM x402_claim_journal", &[])
                .await
                .map_err(unavailable("reading the journal"))?;
            Ok(Answer::Id(row.get::<_, Option<i64>>(0).map(|v| v as u64)))
        }
        Op::Count => {
            let row = c
                .query_one("SELECT count(*) FROM x402_claim_journal", &[])
                .await
                .map_err(unavailable("counting the journal"))?;
            Ok(Answer::Count(row.get::<_, i64>(0) as usize))
        }
    }
}

fn unexpected() -> StoreError {
    StoreError::Unavailable("the journal thread answered another question".into())
}

/// Every write is committed with `synchronous_commit = on`, durable or not: the journal is
/// written a few times per claim batch, not per request.
impl JournalStore for PostgresStore {
    fn put_entry(&self, entry: &JournalEntry, _durable: bool) -> Result<(), StoreError> {
        let bytes = codec::encode_entry(entry)?;
        match self.journal.ask(Op::Put(entry.id, bytes))? {
            Answer::Done => Ok(()),
            _ => Err(unexpected()),
        }
    }

    fn entry(&self, id: u64) -> Result<Option<JournalEntry>, StoreError> {
        match self.journal.ask(Op::Get(id))? {
            Answer::Entry(e) => Ok(e),
            _ => Err(unexpected()),
        }
    }

    fn remove_entry(&self, id: u64) -> Result<(), StoreError> {
        match self.journal.ask(Op::Remove(id))? {
            Answer::Done => Ok(()),
            _ => Err(unexpected()),
        }
    }

    fn entries(&self) -> Result<Vec<JournalEntry>, StoreError> {
        match self.journal.ask(Op::All)? {
            Answer::Entries(e) => Ok(e),
            _ => Err(unexpected()),
        }
    }

    fn last_entry_id(&self) -> Result<Option<u64>, StoreError> {
        match self.journal.ask(Op::Last)? {
            Answer::Id(id) => Ok(id),
            _ => Err(unexpected()),
        }
    }

    fn entry_count(&self) -> usize {
        match self.journal.ask(Op::Count) {
            Ok(Answer::Count(n)) => n,
            _ => 0,
        }
    }
}
