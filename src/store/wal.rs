//! The write-ahead log in front of sled: the group commit's batches are made durable here
//! (one synchronous write of a preallocated file), and applied to sled after the
//! writers were acknowledged. sled is flushed at checkpoints, not per batch.
//!
//! Why: a sled flush per batch is a `pwrite` of its pages plus work on its thread pool, and
//! an `fdatasync` of its growing file then also commits the file's size; an overwrite in a
//! preallocated file syncs data only (docs/benchmarks.md and `perf-limits.md`: about 100 µs
//! against 250 µs per batch on this disk). The log holds every write since the last
//! checkpoint; replaying it over sled at open restores whatever sled had not flushed.
//!
//! Layout of `<dir>/channels.wal`:
//! - two header slots, at 0 and [`SLOT_B`], each `magic ‖ epoch (u64 LE) ‖ crc32`; the valid
//!   slot with the higher epoch is current. A checkpoint writes the other slot, so a torn
//!   header write leaves the previous one readable;
//! - frames from [`DATA_START`]: `len (u32 LE) ‖ epoch (u64 LE) ‖ crc32 ‖ payload`, the crc
//!   over `len ‖ epoch ‖ payload`. Replay stops at the first frame that is empty, torn, or of
//!   another epoch: frames are overwritten in place after each checkpoint, so what follows
//!   the last frame of this epoch is an older epoch's, never to be applied again;
//! - payload: `0 ‖ key (32) ‖ value` (a channel record in the codec's format) or `1 ‖ key`
//!   (a removal).
//!
//! The file grows by writing zeros ([`GROW_BYTES`] at a time, synced), never with holes, so
//! a frame's write has no block allocation or size change to commit.
//!
//! Frames are written with `O_DIRECT | O_DSYNC` where the file system allows it: one
//! `pwrite` of whole 4 KiB blocks that returns once the blocks are on stable storage, with no
//! page cache and no separate `fdatasync` (49 against 74 µs per commit on this machine's
//! disk, and less CPU on the store thread: docs/benchmarks.md). A commit that ends inside a
//! block rewrites that block next time with the same leading bytes, so a torn rewrite leaves
//! every acknowledged byte as it was. Where `O_DIRECT` is refused (`EINVAL`), frames go
//! through the page cache and `fdatasync`, as durable and slower.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// File name of the log inside the store directory.
pub(crate) const FILE_NAME: &str = "channels.wal";

const MAGIC: &[u8; 8] = b"x402wal1";
/// Second header slot, in its own sector.
const SLOT_B: u64 = 512;
/// First frame.
const DATA_START: u64 = 4096;
/// The file is extended by this much of zeros when a batch would pass its end.
const GROW_BYTES: u64 = 8 << 20;
/// Unit of a direct write: offset, length and buffer address are multiples of it (4 KiB
/// covers devices with 512-byte and 4 KiB logical blocks).
const BLOCK: usize = 4096;
/// Frame header: len, epoch, crc.
const FRAME_HEADER: usize = 16;
/// No single write is larger (a record is ~200 bytes); a bigger length is garbage.
const MAX_PAYLOAD: u32 = 1 << 20;

/// Payload tag of a write.
pub(crate) const PUT: u8 = 0;
/// Payload tag of a removal.
pub(crate) const REMOVE: u8 = 1;

/// One logged write, as replayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LoggedOp {
    /// Store `value` under `key`.
    Put { key: [u8; 32], value: Vec<u8> },
    /// Delete `key`.
    Remove { key: [u8; 32] },
}

/// The log file, positioned after the last frame of the current epoch.
#[derive(Debug)]
pub(crate) struct WriteAheadLog {
    path: PathBuf,
    file: File,
    epoch: u64,
    /// Header slot holding `epoch` (0 or [`SLOT_B`]).
    slot: u64,
    /// Where the next frame goes.
    end: u64,
    /// Current file length (all written, zeros past `end`).
    len: u64,
    /// Frames of the batch being built.
    buf: Vec<u8>,
    /// The file opened with `O_DIRECT | O_DSYNC`, for frames; `None` where refused.
    direct: Option<File>,
    /// Block-aligned staging for direct writes.
    staging: AlignedBuf,
    /// The bytes of this epoch already in the block that holds `end` (`end % BLOCK` of them):
    /// a direct write rewrites that block whole.
    tail: Vec<u8>,
}

/// A byte buffer whose usable part starts at a [`BLOCK`] boundary (over-allocated and
/// offset, so no unsafe allocation is needed).
#[derive(Debug, Default)]
struct AlignedBuf {
    raw: Vec<u8>,
    offset: usize,
}

impl AlignedBuf {
    /// `len` bytes starting at a block boundary (contents unspecified).
    fn get(&mut self, len: usize) -> &mut [u8] {
        if self.raw.len() < self.offset + len {
            self.raw = vec![0; len + BLOCK];
            self.offset = self.raw.as_ptr().align_offset(BLOCK);
        }
        &mut self.raw[self.offset..self.offset + len]
    }
}

fn align_down(at: u64) -> u64 {
    at - at % BLOCK as u64
}

fn align_up(at: u64) -> u64 {
    at.div_ceil(BLOCK as u64) * BLOCK as u64
}

impl WriteAheadLog {
    /// Opens (or creates) the log in `dir` and reads the current epoch's writes, in order.
    pub(crate) fn open(dir: &Path) -> io::Result<(Self, Vec<LoggedOp>)> {
        let path = dir.join(FILE_NAME);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let len = file.metadata()?.len();
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_DSYNC)
            .open(&path)
            .ok();
        let mut log = Self {
            path,
            file,
            epoch: 0,
            slot: SLOT_B,
            end: DATA_START,
            len,
            buf: Vec::with_capacity(64 << 10),
            direct,
            staging: AlignedBuf::default(),
            tail: Vec::with_capacity(BLOCK),
        };
        let header = if len < DATA_START {
            None
        } else {
            log.current_header()?
        };
        let Some((slot, epoch)) = header else {
            // New, or cut short before its first header was synced: it acknowledged nothing.
            log.grow(DATA_START + GROW_BYTES)?;
            log.write_header(0, 1)?;
            sync_dir(dir)?;
            return Ok((log, Vec::new()));
        };
        (log.slot, log.epoch) = (slot, epoch);
        let ops = log.read_frames()?;
        Ok((log, ops))
    }

    /// The file's path (for error messages).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of frames written since the last checkpoint.
    pub(crate) fn used(&self) -> u64 {
        self.end - DATA_START
    }

    /// Adds a write to the batch being built.
    #[cfg(test)]
    pub(crate) fn push(&mut self, op: &LoggedOp) {
        let (tag, key, value): (u8, &[u8; 32], &[u8]) = match op {
            LoggedOp::Put { key, value } => (PUT, key, value),
            LoggedOp::Remove { key } => (REMOVE, key, &[]),
        };
        self.push_parts(tag, key, value);
    }

    /// [`Self::push`] without building a [`LoggedOp`].
    pub(crate) fn push_parts(&mut self, tag: u8, key: &[u8; 32], value: &[u8]) {
        let payload_len = 1 + key.len() + value.len();
        let len = u32::try_from(payload_len).unwrap_or(u32::MAX);
        let start = self.buf.len();
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(&self.epoch.to_le_bytes());
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.push(tag);
        self.buf.extend_from_slice(key);
        self.buf.extend_from_slice(value);
        let crc = frame_crc(
            &self.buf[start..start + 12],
            &self.buf[start + FRAME_HEADER..],
        );
        self.buf[start + 12..start + FRAME_HEADER].copy_from_slice(&crc.to_le_bytes());
    }

    /// Writes the batch built with [`Self::push`] durably (a direct synchronous write, or a
    /// write and `fdatasync`). On error nothing of it counts as written (the position stays;
    /// the caller stops acknowledging).
    pub(crate) fn commit(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let need = self.end + self.buf.len() as u64;
        if align_up(need) > self.len {
            self.grow(align_up(need) + GROW_BYTES)?;
        }
        let mut result = self.write_frames();
        if let Err(e) = &result
            && e.raw_os_error() == Some(libc::EINVAL)
        {
            // The file system takes no direct I/O at this alignment: use the page cache.
            tracing::warn!(path = %self.path.display(), "O_DIRECT refused; the log falls back to write + fdatasync");
            self.direct = None;
            result = self.write_frames();
        }
        if result.is_ok() {
            self.end = need;
        }
        self.buf.clear();
        result
    }

    /// One commit's write: the blocks from the one holding `end` to the batch's last, whole,
    /// with `O_DIRECT | O_DSYNC`; or, without a direct handle, the frames and `fdatasync`.
    fn write_frames(&mut self) -> io::Result<()> {
        let Some(direct) = &self.direct else {
            return self
                .file
                .write_all_at(&self.buf, self.end)
                .and_then(|()| self.file.sync_data());
        };
        let start = align_down(self.end);
        let head = self.tail.len();
        let used = head + self.buf.len();
        let out = self.staging.get(align_up(used as u64) as usize);
        out[..head].copy_from_slice(&self.tail);
        out[head..used].copy_from_slice(&self.buf);
        // Past the frames: zeros (an empty frame ends the replay).
        out[used..].fill(0);
        direct.write_all_at(out, start)?;
        let last = used - used % BLOCK;
        self.tail.clear();
        self.tail.extend_from_slice(&out[last..used]);
        Ok(())
    }

    /// Starts a new epoch: every write logged so far must already be durable elsewhere
    /// (sled flushed and synced). The old frames stay in the file but no longer replay.
    pub(crate) fn checkpoint(&mut self) -> io::Result<()> {
        let next = if self.slot == 0 { SLOT_B } else { 0 };
        self.write_header(next, self.epoch + 1)?;
        self.end = DATA_START;
        self.tail.clear();
        Ok(())
    }

    fn write_header(&mut self, slot: u64, epoch: u64) -> io::Result<()> {
        let mut header = [0u8; 20];
        header[..8].copy_from_slice(MAGIC);
        header[8..16].copy_from_slice(&epoch.to_le_bytes());
        let crc = crc32fast::hash(&header[..16]);
        header[16..].copy_from_slice(&crc.to_le_bytes());
        self.file.write_all_at(&header, slot)?;
        self.file.sync_data()?;
        (self.slot, self.epoch) = (slot, epoch);
        Ok(())
    }

    /// The valid header slot with the higher epoch; `None` if no header was ever written.
    fn current_header(&self) -> io::Result<Option<(u64, u64)>> {
        let mut best = None;
        let mut blank = true;
        for slot in [0, SLOT_B] {
            let mut header = [0u8; 20];
            self.file.read_exact_at(&mut header, slot)?;
            blank &= header.iter().all(|&b| b == 0);
            let crc = u32::from_le_bytes([header[16], header[17], header[18], header[19]]);
            if &header[..8] != MAGIC || crc32fast::hash(&header[..16]) != crc {
                continue;
            }
            let mut epoch = [0u8; 8];
            epoch.copy_from_slice(&header[8..16]);
            let epoch = u64::from_le_bytes(epoch);
            if best.is_none_or(|(_, e)| epoch > e) {
                best = Some((slot, epoch));
            }
        }
        if best.is_none() && !blank {
            // A log whose headers are both damaged may hold acknowledged writes: refuse to
            // guess rather than start without them.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: no valid header", self.path.display()),
            ));
        }
        Ok(best)
    }

    /// Reads the frames of the current epoch and positions the log after the last one.
    fn read_frames(&mut self) -> io::Result<Vec<LoggedOp>> {
        let mut data = vec![0u8; usize::try_from(self.len - DATA_START).unwrap_or(0)];
        self.file.read_exact_at(&mut data, DATA_START)?;
        let mut ops = Vec::new();
        let mut at = 0usize;
        while let Some((op, size)) = parse_frame(&data[at..], self.epoch) {
            ops.push(op);
            at += size;
        }
        self.end = DATA_START + at as u64;
        let block = usize::try_from(align_down(self.end) - DATA_START).unwrap_or(0);
        self.tail.clear();
        self.tail.extend_from_slice(&data[block..at]);
        Ok(ops)
    }

    fn grow(&mut self, to: u64) -> io::Result<()> {
        let zeros = vec![0u8; 1 << 20];
        let mut at = self.len;
        while at < to {
            let n = (to - at).min(zeros.len() as u64);
            self.file.write_all_at(&zeros[..n as usize], at)?;
            at += n;
        }
        self.file.sync_all()?;
        self.len = to;
        Ok(())
    }
}

/// One frame of `epoch` at the start of `data`, and its size; `None` at the end of the log.
fn parse_frame(data: &[u8], epoch: u64) -> Option<(LoggedOp, usize)> {
    let header = data.get(..FRAME_HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?);
    if len == 0 || len > MAX_PAYLOAD {
        return None;
    }
    if u64::from_le_bytes(header[4..12].try_into().ok()?) != epoch {
        return None;
    }
    let crc = u32::from_le_bytes(header[12..16].try_into().ok()?);
    let payload = data.get(FRAME_HEADER..FRAME_HEADER + len as usize)?;
    if frame_crc(&header[..12], payload) != crc {
        return None;
    }
    let (&tag, rest) = payload.split_first()?;
    let key: [u8; 32] = rest.get(..32)?.try_into().ok()?;
    let op = match tag {
        PUT => LoggedOp::Put {
            key,
            value: rest[32..].to_vec(),
        },
        REMOVE if rest.len() == 32 => LoggedOp::Remove { key },
        _ => return None,
    };
    Some((op, FRAME_HEADER + len as usize))
}

fn frame_crc(len_and_epoch: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(len_and_epoch);
    hasher.update(payload);
    hasher.finalize()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: u8, v: &[u8]) -> LoggedOp {
        LoggedOp::Put {
            key: [k; 32],
            value: v.to_vec(),
        }
    }

    fn log_ops(log: &mut WriteAheadLog, ops: &[LoggedOp]) {
        for op in ops {
            log.push(op);
        }
        log.commit().expect("commit");
    }

    #[test]
    fn committed_frames_replay_in_order() {
        let dir = tempfile::tempdir().expect("dir");
        let ops = vec![
            put(1, b"a"),
            put(2, b"bb"),
            LoggedOp::Remove { key: [1; 32] },
            put(1, &[7; 300]),
        ];
        {
            let (mut log, found) = WriteAheadLog::open(dir.path()).expect("open");
            assert!(found.is_empty());
            log_ops(&mut log, &ops[..2]);
            log_ops(&mut log, &ops[2..]);
        }
        let (log, found) = WriteAheadLog::open(dir.path()).expect("reopen");
        assert_eq!(found, ops);
        assert!(log.used() > 0);
    }

    #[test]
    fn a_checkpoint_retires_earlier_frames_even_where_they_are_not_overwritten() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let (mut log, _) = WriteAheadLog::open(dir.path()).expect("open");
            log_ops(&mut log, &[put(1, &[1; 500]), put(2, &[2; 500])]);
            log.checkpoint().expect("checkpoint");
            // Shorter than what it overwrites: the older epoch's frames follow it on disk.
            log_ops(&mut log, &[put(3, b"c")]);
        }
        let (_, found) = WriteAheadLog::open(dir.path()).expect("reopen");
        assert_eq!(found, vec![put(3, b"c")]);
        let (mut log, _) = WriteAheadLog::open(dir.path()).expect("reopen");
        log.checkpoint().expect("checkpoint");
        drop(log);
        let (_, found) = WriteAheadLog::open(dir.path()).expect("reopen");
        assert!(found.is_empty());
    }

    #[test]
    fn a_torn_or_corrupt_frame_ends_the_replay() {
        let dir = tempfile::tempdir().expect("dir");
        let first = {
            let (mut log, _) = WriteAheadLog::open(dir.path()).expect("open");
            log_ops(&mut log, &[put(1, b"one")]);
            let first = log.end;
            log_ops(&mut log, &[put(2, b"two"), put(3, b"three")]);
            first
        };
        // Flip a byte in the second frame's payload: it and everything after it is dropped.
        let path = dir.path().join(FILE_NAME);
        let file = OpenOptions::new().write(true).open(&path).expect("file");
        file.write_all_at(&[0xff], first + FRAME_HEADER as u64 + 5)
            .expect("corrupt");
        let (log, found) = WriteAheadLog::open(dir.path()).expect("reopen");
        assert_eq!(found, vec![put(1, b"one")]);
        assert_eq!(log.end, first, "the next frame overwrites the torn one");
    }

    #[test]
    fn a_torn_header_falls_back_to_the_other_slot() {
        let dir = tempfile::tempdir().expect("dir");
        {
            let (mut log, _) = WriteAheadLog::open(dir.path()).expect("open");
            log.checkpoint().expect("checkpoint"); // epoch 2, in slot B
            log_ops(&mut log, &[put(9, b"nine")]);
        }
        // A later checkpoint's header write (slot 0, epoch 3) torn: slot B still rules.
        let path = dir.path().join(FILE_NAME);
        let file = OpenOptions::new().write(true).open(&path).expect("file");
        let mut torn = [0u8; 20];
        torn[..8].copy_from_slice(MAGIC);
        torn[8..16].copy_from_slice(&3u64.to_le_bytes());
        file.write_all_at(&torn, 0).expect("tear");
        let (log, found) = WriteAheadLog::open(dir.path()).expect("reopen");
        assert_eq!(log.epoch, 2);
        assert_eq!(found, vec![put(9, b"nine")]);
    }

    /// Many small commits, some ending inside a block and some across block edges, with a
    /// reopen between rounds (the reopened log rebuilds the partial block it rewrites next).
    fn small_commits_replay_after_each_reopen(direct: bool) {
        let dir = tempfile::tempdir().expect("dir");
        let mut all = Vec::new();
        for round in 0..3u8 {
            let (mut log, found) = WriteAheadLog::open(dir.path()).expect("open");
            assert_eq!(found, all, "round {round}");
            if !direct {
                log.direct = None;
            }
            for i in 0..60u8 {
                let op = put(i, &vec![round ^ i; 40 + 37 * usize::from(i % 9)]);
                log_ops(&mut log, std::slice::from_ref(&op));
                all.push(op);
            }
            if round == 1 {
                log_ops(&mut log, &[LoggedOp::Remove { key: [3; 32] }]);
                all.push(LoggedOp::Remove { key: [3; 32] });
            }
        }
        let (_, found) = WriteAheadLog::open(dir.path()).expect("reopen");
        assert_eq!(found, all);
    }

    #[test]
    fn small_direct_commits_replay_after_each_reopen() {
        small_commits_replay_after_each_reopen(true);
    }

    #[test]
    fn small_buffered_commits_replay_after_each_reopen() {
        small_commits_replay_after_each_reopen(false);
    }

    /// The file system type of the mount holding `path` (the longest mount point that
    /// prefixes it, from `/proc/self/mounts`).
    fn fs_type(path: &Path) -> Option<String> {
        let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
        let path = path.canonicalize().ok()?;
        mounts
            .lines()
            .filter_map(|line| {
                let mut fields = line.split(' ');
                let (_, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
                path.starts_with(point)
                    .then(|| (point.len(), kind.to_owned()))
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, kind)| kind)
    }

    /// On ext4 (this project's machines and CI) the log must take the direct path, so the
    /// tests above exercise it; other file systems may refuse it and fall back.
    #[test]
    fn frames_go_direct_on_ext4() {
        let dir = tempfile::tempdir().expect("dir");
        let (mut log, _) = WriteAheadLog::open(dir.path()).expect("open");
        log_ops(&mut log, &[put(1, b"x")]);
        if fs_type(dir.path()).as_deref() == Some("ext4") {
            assert!(log.direct.is_some(), "ext4 takes O_DIRECT");
        }
    }

    #[test]
    fn the_file_grows_past_its_preallocation() {
        let dir = tempfile::tempdir().expect("dir");
        let value = vec![5u8; 100_000];
        let ops: Vec<_> = (0..100).map(|k| put(k, &value)).collect();
        {
            let (mut log, _) = WriteAheadLog::open(dir.path()).expect("open");
            for chunk in ops.chunks(10) {
                log_ops(&mut log, chunk);
            }
            assert!(log.len > DATA_START + GROW_BYTES);
        }
        let (_, found) = WriteAheadLog::open(dir.path()).expect("reopen");
        assert_eq!(found, ops);
    }
}
