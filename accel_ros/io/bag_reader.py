"""Reading rosbag2 inputs as robots leave them: intact, cut short, or never closed.

A recording that a crash, a killed `ros2 bag record` or a power loss cut short has no MCAP
summary/footer, no metadata.yaml, or a sqlite3 database that was never closed; the index-based
readers (`rosbags`, `ros2 bag play`) refuse such bags although most of their messages are
intact. This module reads the storage files themselves, front to back:

- MCAP: records are streamed from the magic onwards (record classes of the `mcap` package);
  every chunk is decompressed and CRC-checked on its own, so one bad chunk costs only its own
  messages, and a chunk cut by the end of the file still gives the complete messages before the
  cut. The summary section is never needed.
- sqlite3 (.db3): the topics and messages tables are read directly, in batches, with SQLite
  itself replaying a write-ahead log left by an unclosed recording; a database that turns
  malformed midway keeps the messages read before.
- A bag folder without metadata.yaml: its storage files are read as `ros2 bag reindex` would,
  and the report says so.

What was recovered and what was lost (messages, time range, byte offset of the damage) is in
`BagInput.report`. Intact bags go through the same path, so they are checked the same way.
"""

from __future__ import annotations

import re
import sqlite3
import struct
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import yaml
from mcap.data_stream import ReadDataStream
from mcap.exceptions import EndOfFile
from mcap.opcode import Opcode
from mcap.records import Channel, Message, Schema
from rosbags.interfaces import (
    Connection,
    ConnectionExtRosbag2,
    MessageDefinition,
    MessageDefinitionFormat,
)

MCAP_MAGIC = b"\x89MCAP0\r\n"
# Storage file suffix -> rosbag2 storage plugin; the one list both reading and writing use.
STORAGE_SUFFIXES = {".mcap": "mcap", ".db3": "sqlite3"}
# Longest stretch of a record cut by the end of the file that is read to salvage messages:
# a corrupt length field must not make us load the rest of a huge file into memory.
MAX_SALVAGE_BYTES = 512 * 2**20
_SQLITE_BATCH = 256
_SCHEMA_FORMATS = {
    "ros2msg": MessageDefinitionFormat.MSG,
    "ros2idl": MessageDefinitionFormat.IDL,
    "omgidl": MessageDefinitionFormat.IDL,
}


class BagError(ValueError):
    """A bag, or a storage file in it, that cannot be read at all. The message names the file
    and the problem in one line: the CLI prints it as is (a ValueError, so callers that already
    report bad input keep working)."""


@dataclass
class Damage:
    """One place where a storage file stops being readable. `offset` is the byte offset of the
    damaged record (None for sqlite3, which has no meaningful one)."""

    file: Path
    offset: int | None
    problem: str

    def __str__(self) -> str:
        where = f" at byte {self.offset}" if self.offset is not None else ""
        return f"{self.file.name}{where}: {self.problem}"


@dataclass
class RecoveryReport:
    """What reading a bag found. `recovered` counts messages handed out (all topics);
    `expected` is metadata.yaml's count when that survived; `dropped` counts messages that were
    seen but could not be trusted (bad chunk CRC, no channel record); `uncounted` is set when
    some loss cannot be counted (a cut file, a chunk that does not decompress); `lost_after_ns`
    when a file was cut: nothing after that time survived in it."""

    path: Path
    notes: list[str] = field(default_factory=list)
    damage: list[Damage] = field(default_factory=list)
    recovered: int = 0
    first_ns: int | None = None
    last_ns: int | None = None
    expected: int | None = None
    dropped: int = 0
    lost_after_ns: int | None = None
    uncounted: bool = False

    @property
    def damaged(self) -> bool:
        return bool(self.damage)

    @property
    def lost(self) -> int | None:
        """Messages known to be missing; None when the count cannot be known (a file cut
        without metadata.yaml: what was after the cut is gone with its index)."""
        if self.expected is not None:
            return max(self.expected - self.recovered, 0)
        if self.uncounted:
            return None
        return self.dropped

    def add_time(self, stamp_ns: int) -> None:
        self.first_ns = stamp_ns if self.first_ns is None else min(self.first_ns, stamp_ns)
        self.last_ns = stamp_ns if self.last_ns is None else max(self.last_ns, stamp_ns)

    def summary_line(self) -> str:
        """One line: recovered messages and time range, and what was lost."""
        span = ""
        if self.first_ns is not None and self.last_ns is not None:
            span = f" (t={self.first_ns * 1e-9:.6f}..{self.last_ns * 1e-9:.6f} s)"
        line = f"{self.path}: recovered {self.recovered} messages{span}"
        if not self.damaged:
            return line
        lost = self.lost
        if lost is not None:
            source = " (metadata.yaml count)" if self.expected is not None else ""
            line += f"; lost {lost} messages{source}"
        else:
            line += "; lost: an unknown number of messages (the index did not survive)"
        if self.lost_after_ns is not None:
            line += f", everything recorded after t={self.lost_after_ns * 1e-9:.6f} s"
        return line

    def lines(self) -> list[str]:
        """Notes, one line per damage, then the summary line."""
        return [*self.notes, *(f"damaged: {d}" for d in self.damage), self.summary_line()]


# ---------------------------------------------------------------------------------------------
# Storage files


@dataclass
class _Topic:
    """A topic as one storage file declares it (MCAP channel or sqlite3 topics row)."""

    topic: str
    msgtype: str
    serialization_format: str
    qos: str
    msgdef: MessageDefinition
    digest: str


class _StorageFile:
    """What both storage readers find in one file: topics by file-local id, per-topic message
    counts and time spans, damage, and whether the file was cut (nothing after
    `cut_after_ns` survived)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.topics: dict[int, _Topic] = {}
        self.counts: Counter[int] = Counter()
        self.spans: dict[int, tuple[int, int]] = {}
        self.damage: list[Damage] = []
        self.dropped = 0
        self.cut = False
        self.cut_after_ns: int | None = None
        self.uncounted = False  # a loss whose size cannot be known (see RecoveryReport)

    def _count(self, local_id: int, stamp_ns: int) -> None:
        self.counts[local_id] += 1
        first, last = self.spans.get(local_id, (stamp_ns, stamp_ns))
        self.spans[local_id] = (min(first, stamp_ns), max(last, stamp_ns))


class _McapFile(_StorageFile):
    """Streams one MCAP file record by record; see the module docstring."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        # A power loss often leaves the last blocks of a file zero-filled. Zeros are never the
        # end of a valid MCAP (it ends in the magic) nor of a cut record worth keeping: they
        # would pass as the tail of a message. So the file is read as ending before them.
        self.zero_tail = _trailing_zeros(path)
        self.size = path.stat().st_size - self.zero_tail
        self._schemas: dict[int, Schema] = {}
        self._channels: dict[int, Channel] = {}

    # -- public --------------------------------------------------------------------------

    def scan(self) -> None:
        """First pass: channels, message counts, time range and damage."""
        last_ns: int | None = None
        for kind, record in self._records(record_damage=True):
            if kind == "schema":
                self._schemas.setdefault(record.id, record)
            elif kind == "channel":
                self._channels.setdefault(record.id, record)
            elif kind == "message":
                self._count(record.channel_id, record.log_time)
                last_ns = record.log_time if last_ns is None else max(last_ns, record.log_time)
        self._resolve_topics()
        if self.cut:
            self.cut_after_ns = last_ns
        unknown = sum(n for cid, n in self.counts.items() if cid not in self.topics)
        if unknown:
            self.dropped += unknown
            self.damage.append(Damage(self.path, None, (
                f"{unknown} messages on channels whose Channel/Schema record was lost with a "
                f"damaged chunk: skipped")))

    def messages(self) -> Iterator[tuple[int, int, bytes]]:
        """(channel id, log time ns, CDR bytes) of every recoverable message, in file order."""
        for kind, record in self._records(record_damage=False):
            if kind == "message" and record.channel_id in self.topics:
                yield record.channel_id, record.log_time, record.data

    # -- record walk ---------------------------------------------------------------------

    def _damaged(self, enabled: bool, offset: int | None, problem: str) -> None:
        if enabled:
            self.damage.append(Damage(self.path, offset, problem))

    def _records(self, record_damage: bool) -> Iterator[tuple[str, Any]]:
        with self.path.open("rb") as stream:
            magic = stream.read(len(MCAP_MAGIC))
            if magic != MCAP_MAGIC:
                what = "it is empty" if not magic else f"it starts with {magic!r}"
                raise BagError(f"{self.path}: not an MCAP file ({what}, not the MCAP magic)")
            offset = len(MCAP_MAGIC)
            data_ended = False  # past Data End only the summary follows: no message data
            while True:
                head = stream.read(min(9, max(self.size - offset, 0)))
                opcode, length = struct.unpack("<BQ", head) if len(head) == 9 else (-1, 0)
                available = self.size - offset - 9
                if len(head) < 9:
                    where = "inside a record header" if head else "after a complete record"
                    problem = f"file ends {where}, without the footer a clean close writes"
                elif opcode == 0 or 0x10 <= opcode < 0x80:
                    problem = (f"invalid record opcode 0x{opcode:02x}: the rest of the file "
                               f"({self.size - offset} bytes) is not MCAP records")
                elif length > available:
                    problem = (f"file ends inside a {_opcode_name(opcode)} record ({available} "
                               f"of {length} bytes present)")
                else:
                    problem = ""
                if problem:
                    self.cut = not data_ended
                    if self.zero_tail:
                        problem += (f"; the {self.zero_tail} bytes after it are zeros (what a "
                                    f"power loss leaves), ignored")
                    file_size = self.size + self.zero_tail
                    problem += (" in the summary section, after all message data: no message "
                                "lost" if data_ended else f"; file size {file_size}")
                    self._damaged(record_damage, offset, problem)
                    if opcode == Opcode.CHUNK and not data_ended and length > available:
                        partial = stream.read(min(available, MAX_SALVAGE_BYTES))
                        yield from self._chunk(partial, offset, record_damage, cut=True)
                    return
                body = stream.read(length)
                if opcode == Opcode.FOOTER:
                    if stream.read(len(MCAP_MAGIC)) != MCAP_MAGIC:
                        self._damaged(record_damage, offset, (
                            "footer is not followed by the closing magic (no message lost)"))
                    return
                if opcode == Opcode.DATA_END:
                    data_ended = True
                elif opcode == Opcode.CHUNK:
                    yield from self._chunk(body, offset, record_damage, cut=False)
                elif opcode in (Opcode.SCHEMA, Opcode.CHANNEL, Opcode.MESSAGE):
                    parsed = _parse_record(opcode, body)
                    if parsed is None:
                        self._damaged(record_damage, offset,
                                      f"malformed {_opcode_name(opcode)} record: skipped")
                    else:
                        yield parsed
                offset += 9 + length

    def _chunk(
        self, body: bytes, offset: int, record_damage: bool, *, cut: bool
    ) -> Iterator[tuple[str, Any]]:
        """Records of one chunk. A chunk cut by the end of the file (`cut`) gives the complete
        records in its first part; a complete chunk that fails its CRC gives none (its bytes
        cannot be trusted) and its messages are counted as dropped."""
        fields = _chunk_fields(body)
        if fields is None:  # cut inside the chunk's own header: nothing to salvage
            return
        start_ns, end_ns, size, crc, compression, data = fields
        span = f"t={start_ns * 1e-9:.6f}..{end_ns * 1e-9:.6f} s"
        try:
            raw = _decompress(data, compression, size, partial=cut)
        except Exception as error:  # zstd/lz4 raise their own error types on corrupt input
            self.uncounted = True
            self._damaged(record_damage, offset, (
                f"chunk ({span}) does not decompress ({compression or 'uncompressed'}: "
                f"{error}): its messages are lost"))
            return
        records, bad_at = _inner_records(raw)
        messages = sum(1 for kind, _ in records if kind == "message")
        if cut:
            if record_damage:
                self.damage[-1].problem += (
                    f"; salvaged {messages} complete messages from that chunk ({span})")
            yield from records
            return
        if len(raw) != size or (crc and zlib.crc32(raw) != crc):
            problem = (f"size {len(raw)} != {size}" if len(raw) != size
                       else f"CRC {zlib.crc32(raw):08x} != {crc:08x}")
            if record_damage:
                self.dropped += messages
            self._damaged(record_damage, offset, (
                f"chunk ({span}) fails its check ({problem}): its {messages} messages "
                f"skipped"))
            return
        if bad_at is not None:
            self.uncounted = True
            self._damaged(record_damage, offset, (
                f"chunk ({span}) is malformed {bad_at} bytes into its records: the rest "
                f"of it is lost"))
        yield from records

    def _resolve_topics(self) -> None:
        for cid, channel in self._channels.items():
            schema = self._schemas.get(channel.schema_id)
            if schema is None:
                continue
            fmt = _SCHEMA_FORMATS.get(schema.encoding, MessageDefinitionFormat.NONE)
            text = "" if fmt == MessageDefinitionFormat.NONE else schema.data.decode(
                "utf-8", "replace")
            self.topics[cid] = _Topic(
                topic=channel.topic,
                msgtype=schema.name,
                serialization_format=channel.message_encoding,
                qos=channel.metadata.get("offered_qos_profiles", ""),
                msgdef=MessageDefinition(fmt, text),
                digest="",
            )


def _trailing_zeros(path: Path, block: int = 65536) -> int:
    """Number of zero bytes at the end of the file."""
    size = path.stat().st_size
    zeros = 0
    with path.open("rb") as stream:
        while zeros < size:
            length = min(block, size - zeros)
            stream.seek(size - zeros - length)
            data = stream.read(length)
            stripped = data.rstrip(b"\0")
            zeros += length - len(stripped)
            if stripped:
                break
    return zeros


def _opcode_name(opcode: int) -> str:
    try:
        return Opcode(opcode).name.replace("_", " ").title().replace(" ", "")
    except ValueError:
        return f"private (0x{opcode:02x})"


def _parse_record(opcode: int, body: bytes) -> tuple[str, Any] | None:
    """("schema" | "channel" | "message", record), or None if the bytes do not parse."""
    stream = ReadDataStream(BytesIO(body))
    try:
        if opcode == Opcode.SCHEMA:
            return "schema", Schema.read(stream)
        if opcode == Opcode.CHANNEL:
            return "channel", Channel.read(stream)
        if opcode == Opcode.MESSAGE:
            if len(body) < 22:
                return None
            return "message", Message.read(stream, len(body))
    except (EndOfFile, struct.error, UnicodeDecodeError):
        return None
    return None


def _chunk_fields(body: bytes) -> tuple[int, int, int, int, str, bytes] | None:
    """(start ns, end ns, uncompressed size, CRC, compression, records bytes) of a chunk
    record's body; the records bytes are cut short when the body is. None when even the
    fixed header is incomplete."""
    if len(body) < 32:
        return None
    start_ns, end_ns, size, crc, name_len = struct.unpack_from("<QQQII", body)
    if len(body) < 32 + name_len + 8:
        return None
    compression = body[32:32 + name_len].decode("utf-8", "replace")
    (data_len,) = struct.unpack_from("<Q", body, 32 + name_len)
    begin = 32 + name_len + 8
    return start_ns, end_ns, size, crc, compression, body[begin:begin + data_len]


def _decompress(data: bytes, compression: str, size: int, *, partial: bool) -> bytes:
    """Chunk records; for a `partial` (cut) chunk, as much as its first bytes decode to."""
    if compression == "":
        return data
    if compression == "zstd":
        import zstandard

        if partial:
            return zstandard.ZstdDecompressor().decompressobj().decompress(data)
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
    if compression == "lz4":
        import lz4.frame

        if partial:
            return lz4.frame.LZ4FrameDecompressor().decompress(data)
        return lz4.frame.decompress(data)
    raise ValueError(f"unsupported chunk compression {compression!r}")


def _inner_records(raw: bytes) -> tuple[list[tuple[str, Any]], int | None]:
    """Schema/channel/message records inside a chunk's records bytes, up to the first
    incomplete or malformed one, whose offset is returned (None if all parsed)."""
    records: list[tuple[str, Any]] = []
    pos, end = 0, len(raw)
    while pos < end:
        if pos + 9 > end:
            return records, pos
        opcode, length = struct.unpack_from("<BQ", raw, pos)
        if pos + 9 + length > end:
            return records, pos
        if opcode in (Opcode.SCHEMA, Opcode.CHANNEL, Opcode.MESSAGE):
            parsed = _parse_record(opcode, raw[pos + 9:pos + 9 + length])
            if parsed is None:
                return records, pos
            records.append(parsed)
        pos += 9 + length
    return records, None


class _Sqlite3File(_StorageFile):
    """One rosbag2 sqlite3 database, read with SQLite itself (which replays a write-ahead log
    an unclosed recording left beside it)."""

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)
            tables = {row[0] for row in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.Error as error:
            raise BagError(f"{self.path}: unreadable sqlite3 database ({error})") from error
        if not {"messages", "topics"} <= tables:
            conn.close()
            raise BagError(f"{self.path}: not a rosbag2 sqlite3 file (no messages/topics "
                           f"tables; it has {sorted(tables) or 'none'})")
        return conn

    def scan(self) -> None:
        conn = self._connect()
        try:
            self._read_topics(conn)
            last_ns: int | None = None
            for topic_id, stamp, _ in self._rows(conn, record_damage=True, with_data=False):
                self._count(topic_id, stamp)
                last_ns = stamp if last_ns is None else max(last_ns, stamp)
            if self.cut:
                self.cut_after_ns = last_ns
        finally:
            conn.close()
        unknown = sum(n for tid, n in self.counts.items() if tid not in self.topics)
        if unknown:
            self.dropped += unknown
            self.damage.append(Damage(self.path, None,
                                      f"{unknown} messages of unknown topic ids: skipped"))

    def messages(self) -> Iterator[tuple[int, int, bytes]]:
        conn = self._connect()
        try:
            for topic_id, stamp, data in self._rows(conn, record_damage=False, with_data=True):
                if topic_id in self.topics:
                    yield topic_id, stamp, data
        finally:
            conn.close()

    def _read_topics(self, conn: sqlite3.Connection) -> None:
        try:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(topics)")}
            qos = "offered_qos_profiles" if "offered_qos_profiles" in columns else "''"
            digest = "type_description_hash" if "type_description_hash" in columns else "''"
            rows = conn.execute(
                f"SELECT id, name, type, serialization_format, {qos}, {digest} FROM topics"
            ).fetchall()
            definitions: dict[str, tuple[str, str]] = {}
            if conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND "
                            "name='message_definitions'").fetchone():
                for name, encoding, text in conn.execute(
                        "SELECT topic_type, encoding, encoded_message_definition "
                        "FROM message_definitions"):
                    definitions[name] = (encoding, text)
        except sqlite3.Error as error:
            raise BagError(f"{self.path}: unreadable topics table ({error})") from error
        for topic_id, name, msgtype, serialization, qos_text, digest_text in rows:
            encoding, text = definitions.get(msgtype, ("", ""))
            fmt = _SCHEMA_FORMATS.get(encoding, MessageDefinitionFormat.NONE)
            self.topics[topic_id] = _Topic(
                topic=name, msgtype=msgtype, serialization_format=serialization,
                qos=qos_text or "",
                msgdef=MessageDefinition(fmt, text if fmt != MessageDefinitionFormat.NONE
                                         else ""),
                digest=digest_text or "",
            )

    def _rows(
        self, conn: sqlite3.Connection, *, record_damage: bool, with_data: bool
    ) -> Iterator[tuple[int, int, Any]]:
        """(topic id, timestamp, data or None) in recording (row id) order, in batches, so a
        database that turns malformed midway still gives the rows before the bad page."""
        column = "data" if with_data else "NULL"
        last_id = -(2**63)
        while True:
            try:
                batch = conn.execute(
                    f"SELECT id, topic_id, timestamp, {column} FROM messages WHERE id > ? "
                    f"ORDER BY id LIMIT {_SQLITE_BATCH}", (last_id,)).fetchall()
            except sqlite3.Error as error:
                self.cut = True
                if record_damage:
                    after = f"message row {last_id}" if last_id > -(2**63) else "the start"
                    self.damage.append(Damage(self.path, None, (
                        f"sqlite3 cannot read past {after} ({error}): later messages lost")))
                return
            if not batch:
                return
            for row_id, topic_id, stamp, data in batch:
                yield topic_id, stamp, data
                last_id = row_id


# ---------------------------------------------------------------------------------------------
# Bags


class BagInput:
    """A rosbag2 opened for reading: `connections` (rosbags Connection objects, merged across
    storage files, msgcount = recovered messages), `messages()` and `report`."""

    def __init__(self, path: Path, files: list[_McapFile | _Sqlite3File],
                 report: RecoveryReport, metadata_topics: dict[str, dict[str, Any]],
                 message_compression: bool = False) -> None:
        self.path = path
        self.report = report
        self.message_compression = message_compression
        self._files = files
        self._maps: list[dict[int, Connection]] = []
        connections: dict[tuple[str, str, str, str], Connection] = {}
        for storage in files:
            mapping: dict[int, Connection] = {}
            for local_id, topic in storage.topics.items():
                key = (topic.topic, topic.msgtype, topic.serialization_format, topic.qos)
                count = storage.counts.get(local_id, 0)
                known = connections.get(key)
                if known is None:
                    meta = metadata_topics.get(topic.topic, {})
                    known = Connection(
                        id=len(connections) + 1, topic=topic.topic, msgtype=topic.msgtype,
                        msgdef=topic.msgdef,
                        digest=topic.digest or str(meta.get("type_description_hash") or ""),
                        msgcount=count,
                        ext=ConnectionExtRosbag2(topic.serialization_format,
                                                 _parse_qos(topic.qos)),
                        owner=self,
                    )
                else:
                    known = known._replace(msgcount=known.msgcount + count)
                connections[key] = known
                mapping[local_id] = known
            self._maps.append(mapping)
        by_key = {c.id: c for c in connections.values()}
        # Connections were replaced while counting: point every map at the final objects.
        self._maps = [{lid: by_key[c.id] for lid, c in m.items()} for m in self._maps]
        self.connections: list[Connection] = list(by_key.values())

    def messages(self) -> Iterator[tuple[Connection, int, bytes]]:
        """(connection, bag time ns, raw CDR) of every recovered message, file by file in
        recording order."""
        decompress = _message_decompressor() if self.message_compression else None
        for storage, mapping in zip(self._files, self._maps, strict=True):
            for local_id, stamp, data in storage.messages():
                connection = mapping.get(local_id)
                if connection is not None:
                    yield connection, stamp, decompress(data) if decompress else data

    def close(self) -> None:
        """Nothing stays open between reads; kept for symmetry with the other sources."""


def _message_decompressor() -> Any:
    """zstd per message (rosbag2's compression_mode MESSAGE). Bytes that do not decompress
    are handed on as they are: the CDR decoder then reports that one message as corrupt."""
    import zstandard

    decompressor = zstandard.ZstdDecompressor()

    def decompress(data: bytes) -> bytes:
        try:
            return decompressor.decompress(data)
        except zstandard.ZstdError:
            return data

    return decompress


def storage_files(folder: Path) -> list[Path]:
    """Storage files directly inside a bag folder, in split order (name_0, name_1, ...)."""
    files = [p for p in folder.iterdir()
             if p.is_file() and p.suffix.lower() in STORAGE_SUFFIXES]

    def split_key(path: Path) -> tuple[str, int, str]:
        match = re.search(r"_(\d+)$", path.stem)
        return (path.stem[:match.start()] if match else path.stem,
                int(match.group(1)) if match else -1, path.name)

    return sorted(files, key=split_key)


def is_bag_folder(path: Path) -> bool:
    """A folder with metadata.yaml or with .mcap/.db3 storage files in it."""
    return path.is_dir() and ((path / "metadata.yaml").is_file() or bool(storage_files(path)))


def open_bag(path: str | Path) -> BagInput:
    """Open a rosbag2 folder or a bare .mcap/.db3 file, intact or damaged, and scan it.

    Raises FileNotFoundError for a missing path and BagError (one line naming the file) for
    anything that holds no readable storage at all. Damage that still leaves messages is not
    an error: it is described in the returned bag's `report`.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    report = RecoveryReport(path)
    metadata_topics: dict[str, dict[str, Any]] = {}
    compression = ""
    if path.is_dir():
        files, metadata_topics, compression = _folder_files(path, report)
    else:
        if path.suffix.lower() not in STORAGE_SUFFIXES:
            raise BagError(f"{path}: unknown bag format {path.suffix or '(no suffix)'!r}; "
                           f"rosbag2 storage files end in .mcap or .db3")
        files = [path]
    storages: list[_McapFile | _Sqlite3File] = []
    for file in files:
        storage = (_McapFile(file) if file.suffix.lower() == ".mcap" else _Sqlite3File(file))
        try:
            storage.scan()
        except OSError as error:
            raise BagError(f"{file}: cannot read ({error.strerror or error})") from error
        storages.append(storage)
        report.damage.extend(storage.damage)
        report.dropped += storage.dropped
        report.uncounted = report.uncounted or storage.cut or storage.uncounted
        if storage.cut and storage.cut_after_ns is not None:
            report.lost_after_ns = max(report.lost_after_ns or 0, storage.cut_after_ns)
    bag = BagInput(path, storages, report, metadata_topics,
                   message_compression=compression == "message")
    report.recovered = sum(c.msgcount for c in bag.connections)
    if metadata_topics and report.damaged:
        report.expected = sum(int(t.get("message_count", 0)) for t in metadata_topics.values())
    for storage in storages:
        for local_id, (first, last) in storage.spans.items():
            if local_id in storage.topics:
                report.add_time(first)
                report.add_time(last)
    return bag


def _folder_files(
    folder: Path, report: RecoveryReport
) -> tuple[list[Path], dict[str, dict[str, Any]], str]:
    """(storage files, metadata.yaml topics by name, compression mode) of a bag folder: the
    files metadata.yaml lists, or, without a usable metadata.yaml, every .mcap/.db3 inside
    (what `ros2 bag reindex` would index)."""
    found = storage_files(folder)
    meta_path = folder / "metadata.yaml"
    if not meta_path.is_file():
        if not found:
            raise BagError(f"{folder}: not a rosbag2 folder (no metadata.yaml and no .mcap or "
                           f".db3 storage file inside)")
        names = ", ".join(p.name for p in found)
        report.notes.append(
            f"{folder} has no metadata.yaml (rosbag2 writes it only on a clean close): read "
            f"its storage files {names} directly, as `ros2 bag reindex` would; run "
            f"`ros2 bag reindex {folder}` to restore it for other tools")
        return found, {}, ""
    try:
        info = yaml.safe_load(meta_path.read_text(encoding="utf-8"))["rosbag2_bagfile_information"]
        listed = [folder / Path(str(name)).name for name in info["relative_file_paths"]]
        topics = {str(t["topic_metadata"]["name"]): {**t["topic_metadata"],
                                                     "message_count": t.get("message_count", 0)}
                  for t in info.get("topics_with_message_count") or []}
        compression = str(info.get("compression_mode") or "").lower()
    except (OSError, yaml.YAMLError, KeyError, TypeError) as error:
        if not found:
            raise BagError(f"{meta_path}: unreadable ({type(error).__name__}: {error}) and no "
                           f".mcap/.db3 file beside it") from error
        report.notes.append(f"{meta_path} is unreadable ({type(error).__name__}): read the "
                            f"storage files {', '.join(p.name for p in found)} directly")
        return found, {}, ""
    if compression == "file":
        raise BagError(f"{folder}: file-compressed bags (.zstd storage files) are not "
                       f"supported; decompress them first (`ros2 bag convert`)")
    present = [p for p in listed if p.is_file()]
    missing = [p.name for p in listed if not p.is_file()]
    if missing:
        if not present and not found:
            raise BagError(f"{folder}: metadata.yaml lists {', '.join(missing)}, but none of "
                           f"them is there")
        if not present:
            present = found
        report.notes.append(f"{folder}: metadata.yaml lists {', '.join(missing)}, missing: "
                            f"reading {', '.join(p.name for p in present)}")
    return present, topics, compression


def _parse_qos(text: str) -> list[Any]:
    """rosbags' own QoS parsing; a damaged QoS string is not worth losing the topic for."""
    from rosbags.rosbag2.metadata import parse_qos

    try:
        return parse_qos(text) if text else []
    except Exception:  # rosbags raises ReaderError / KeyError / TypeError on odd YAML
        return []
