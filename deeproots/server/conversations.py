"""Conversations kept on the server: one SQLite file (<store>/conversations.db) in WAL mode.

A conversation is a tree of messages (each names its parent), so editing or regenerating a message adds a sibling
branch instead of overwriting; `current_leaf` is the branch the user looks at. Every write is one transaction,
committed with synchronous=FULL: once a request has been answered, a kill -9 cannot lose it.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import RequestError
from ..store import store_home

EXPORT_FORMAT = "deeproots.conversation"
EXPORT_VERSION = 1
ROLES = ("system", "user", "assistant", "tool")
BUSY_TIMEOUT_S = 30.0  # concurrent writers wait for each other's transaction instead of failing

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    settings TEXT NOT NULL,       -- JSON object: the page's system prompt, sampling, ...
    current_leaf TEXT             -- the message whose branch is shown; NULL while empty
);
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    parent_id TEXT REFERENCES messages(id),
    seq INTEGER NOT NULL,         -- order of creation inside the conversation
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    created REAL NOT NULL,
    meta TEXT NOT NULL            -- JSON object: timings, finish reason, ...
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation_id, seq);
"""


class ConversationNotFoundError(RequestError):
    """A conversation or message id that does not exist (HTTP 404)."""


def default_path() -> Path:
    return store_home() / "conversations.db"


def new_id() -> str:
    return uuid.uuid4().hex


class ConversationStore:
    """All reads and writes of conversations.db; one short-lived connection per call (safe across threads)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA synchronous=FULL")
        return db

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = self._open()
        try:
            yield db
        finally:
            db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: taken up front (BEGIN IMMEDIATE) so two writers never deadlock on an upgrade."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # conversations

    def list(self, query: str | None = None) -> list[dict]:
        """Newest first; `query` matches the title or any message's text (case-insensitive substring)."""
        sql = "SELECT * FROM conversations"
        params: tuple = ()
        if query:
            pattern = "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            sql += (" WHERE title LIKE ?1 ESCAPE '\\' OR id IN (SELECT conversation_id FROM messages"
                    " WHERE content LIKE ?1 ESCAPE '\\')")
            params = (pattern,)
        with self._connect() as db:
            return [_conversation(row) for row in db.execute(sql + " ORDER BY updated DESC, id", params)]

    def create(self, title: str, settings: dict) -> dict:
        now = time.time()
        row = {"id": new_id(), "title": title, "created": now, "updated": now, "settings": settings,
               "current_leaf": None}
        with self._write() as db:
            _insert_conversation(db, row)
        return row

    def get(self, conversation_id: str) -> dict:
        """The conversation with all its messages (every branch), in creation order."""
        with self._connect() as db:
            found = _conversation(_row_of(db, conversation_id))
            found["messages"] = [_message(row) for row in db.execute(
                "SELECT * FROM messages WHERE conversation_id = ? ORDER BY seq", (conversation_id,))]
        return found

    def update(self, conversation_id: str, *, title: str | None = None, settings: dict | None = None,
               current_leaf: str | None = None) -> dict:
        with self._write() as db:
            found = _conversation(_row_of(db, conversation_id))
            if current_leaf is not None:
                _message_of(db, conversation_id, current_leaf)
            found.update({key: value for key, value in
                          (("title", title), ("settings", settings), ("current_leaf", current_leaf))
                          if value is not None})
            found["updated"] = time.time()
            db.execute("UPDATE conversations SET title = ?, settings = ?, current_leaf = ?, updated = ? WHERE id = ?",
                       (found["title"], json.dumps(found["settings"]), found["current_leaf"], found["updated"],
                        conversation_id))
        return found

    def delete(self, conversation_id: str) -> None:
        with self._write() as db:
            _row_of(db, conversation_id)
            db.execute("DELETE FROM messages WHERE conversation_id = ?", (conversation_id,))
            db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    # messages

    def append(self, conversation_id: str, role: str, content: str, *, parent_id: str | None = None,
               branch: bool = False, meta: dict | None = None) -> dict:
        """Adds a message under `parent_id` (default: the current leaf; `branch` with no parent starts a new root)
        and makes it the current leaf. A parent that already has children gets a sibling branch."""
        with self._write() as db:
            found = _conversation(_row_of(db, conversation_id))
            if parent_id is None and not branch:
                parent_id = found["current_leaf"]
            if parent_id is not None:
                _message_of(db, conversation_id, parent_id)
            message = {"id": new_id(), "parent_id": parent_id, "role": role, "content": content,
                       "created": time.time(), "meta": meta or {}}
            _insert_message(db, conversation_id, message)
            db.execute("UPDATE conversations SET current_leaf = ?, updated = ? WHERE id = ?",
                       (message["id"], message["created"], conversation_id))
        return message

    def edit(self, conversation_id: str, message_id: str, *, content: str | None = None,
             meta: dict | None = None) -> dict:
        """Changes a message in place (the page finishes a streamed answer this way); branching is `append`."""
        with self._write() as db:
            message = _message(_message_of(db, conversation_id, message_id))
            if content is not None:
                message["content"] = content
            if meta is not None:
                message["meta"] = meta
            db.execute("UPDATE messages SET content = ?, meta = ? WHERE id = ?",
                       (message["content"], json.dumps(message["meta"]), message_id))
            db.execute("UPDATE conversations SET updated = ? WHERE id = ?", (time.time(), conversation_id))
        return message

    # import / export

    def export(self, conversation_id: str) -> dict:
        found = self.get(conversation_id)
        return {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "title": found["title"],
                "created": found["created"], "settings": found["settings"], "current_leaf": found["current_leaf"],
                "messages": found["messages"]}

    def import_(self, document: dict) -> dict:
        """A new conversation from an export (validated by the caller's schema); ids are renewed, the tree kept.
        Raises RequestError, storing nothing, when parents or the current leaf do not resolve."""
        renamed: dict[str, str] = {}
        messages = []
        for message in document["messages"]:
            parent = message.get("parent_id")
            if parent is not None and parent not in renamed:
                raise RequestError(f"message {message['id']!r}: parent_id {parent!r} is not an earlier message")
            if message["id"] in renamed:
                raise RequestError(f"message id {message['id']!r} appears twice")
            renamed[message["id"]] = new_id()
            messages.append({**message, "id": renamed[message["id"]],
                             "parent_id": renamed[parent] if parent is not None else None})
        leaf = document.get("current_leaf")
        if leaf is not None and leaf not in renamed:
            raise RequestError(f"current_leaf {leaf!r} is not one of the messages")
        now = time.time()
        row = {"id": new_id(), "title": document["title"], "created": document.get("created") or now,
               "updated": now, "settings": document.get("settings") or {},
               "current_leaf": renamed[leaf] if leaf is not None else (messages[-1]["id"] if messages else None)}
        with self._write() as db:
            _insert_conversation(db, {**row, "current_leaf": None})
            for message in messages:
                _insert_message(db, row["id"], message)
            db.execute("UPDATE conversations SET current_leaf = ? WHERE id = ?", (row["current_leaf"], row["id"]))
        return row


def _row_of(db: sqlite3.Connection, conversation_id: str) -> sqlite3.Row:
    row = db.execute("SELECT * FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
    if row is None:
        raise ConversationNotFoundError(f"conversation {conversation_id!r} does not exist")
    return row


def _message_of(db: sqlite3.Connection, conversation_id: str, message_id: str) -> sqlite3.Row:
    row = db.execute("SELECT * FROM messages WHERE id = ? AND conversation_id = ?",
                     (message_id, conversation_id)).fetchone()
    if row is None:
        raise ConversationNotFoundError(f"message {message_id!r} is not in conversation {conversation_id!r}")
    return row


def _insert_conversation(db: sqlite3.Connection, row: dict) -> None:
    db.execute("INSERT INTO conversations (id, title, created, updated, settings, current_leaf)"
               " VALUES (?, ?, ?, ?, ?, ?)", (row["id"], row["title"], row["created"], row["updated"],
                                             json.dumps(row["settings"]), row["current_leaf"]))


def _insert_message(db: sqlite3.Connection, conversation_id: str, message: dict) -> None:
    db.execute("INSERT INTO messages (id, conversation_id, parent_id, seq, role, content, created, meta)"
               " VALUES (?, ?, ?, (SELECT COALESCE(MAX(seq), -1) + 1 FROM messages WHERE conversation_id = ?),"
               " ?, ?, ?, ?)", (message["id"], conversation_id, message["parent_id"], conversation_id,
                                message["role"], message["content"], message.get("created") or time.time(),
                                json.dumps(message.get("meta") or {})))


def _conversation(row: sqlite3.Row) -> dict:
    return {"id": row["id"], "title": row["title"], "created": row["created"], "updated": row["updated"],
            "settings": json.loads(row["settings"]), "current_leaf": row["current_leaf"]}


def _message(row: sqlite3.Row) -> dict:
    return {"id": row["id"], "parent_id": row["parent_id"], "role": row["role"], "content": row["content"],
            "created": row["created"], "meta": json.loads(row["meta"])}
