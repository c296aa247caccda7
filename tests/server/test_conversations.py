"""The conversations REST API on a real server process and a real SQLite file: the tree of messages, search,
export/import, malformed imports (400, nothing stored), concurrent writers from two processes, kill -9 mid-write.
The file is checked with Python's own sqlite3, not through our store."""

import json
import sqlite3
import threading

import httpx
import pytest
from live_server import LiveServer

pytestmark = pytest.mark.slow  # real server processes


def start_server(model_path, home):
    """A server whose store (and so conversations.db) is `home`."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEEPROOTS_HOME", str(home))
        return LiveServer(model_path, "--parallel", "1")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def server(smollm2_path, home):
    server = start_server(smollm2_path, home)
    yield server
    server.stop()


def api(server, method: str, path: str, headers: dict | None = None, **kwargs) -> httpx.Response:
    return httpx.request(method, server.url + "/api/conversations" + path,
                         headers={**server.headers, **(headers or {})}, timeout=30, **kwargs)


def ok(response: httpx.Response, status: int = 200) -> dict:
    assert response.status_code == status, response.text
    return response.json() if response.content else {}


def rows(db_path, sql: str, *params) -> list[tuple]:
    with sqlite3.connect(db_path) as db:
        return db.execute(sql, params).fetchall()


def test_messages_form_a_tree_with_branches_edits_and_search(server, home):
    chat = ok(api(server, "POST", "", json={"title": "Plants", "settings": {"system": "Be brief."}}), 201)
    question = ok(api(server, "POST", f"/{chat['id']}/messages", json={"role": "user", "content": "Why 100% green?"}),
                  201)
    first = ok(api(server, "POST", f"/{chat['id']}/messages", json={"role": "assistant", "content": "Chlorophyll"}),
               201)
    assert question["parent_id"] is None and first["parent_id"] == question["id"]
    second = ok(api(server, "POST", f"/{chat['id']}/messages",
                    json={"role": "assistant", "content": "Light", "parent_id": question["id"]}), 201)
    assert second["parent_id"] == question["id"]  # a sibling of `first`: the regenerated branch
    edited = ok(api(server, "PATCH", f"/{chat['id']}/messages/{second['id']}",
                    json={"content": "Light absorption", "meta": {"finish_reason": "stop"}}))
    assert edited["content"] == "Light absorption"

    found = ok(api(server, "GET", f"/{chat['id']}"))
    assert found["current_leaf"] == second["id"] and found["settings"] == {"system": "Be brief."}
    assert [(m["content"], m["meta"]) for m in found["messages"]] == [
        ("Why 100% green?", {}), ("Chlorophyll", {}), ("Light absorption", {"finish_reason": "stop"})]
    assert ok(api(server, "PATCH", f"/{chat['id']}", json={"current_leaf": first["id"], "title": "Leaves"}))[
        "current_leaf"] == first["id"]

    other = ok(api(server, "POST", "", json={"title": "Rocks_1"}), 201)
    titles = lambda q: [c["title"] for c in ok(api(server, "GET", "", params={"q": q}))["data"]]
    assert titles("CHLORO") == ["Leaves"]  # message text, any case
    assert titles("rocks") == ["Rocks_1"]
    assert titles("100%") == ["Leaves"] and titles("_") == ["Rocks_1"]  # LIKE wildcards are literal
    assert titles("%") == ["Leaves"]

    assert api(server, "DELETE", f"/{other['id']}").status_code == 204
    assert api(server, "GET", f"/{other['id']}").status_code == 404
    assert api(server, "POST", f"/{chat['id']}/messages",
               json={"role": "user", "content": "x", "parent_id": "nope"}).status_code == 404
    assert rows(home / "conversations.db", "PRAGMA journal_mode") == [("wal",)]
    api(server, "DELETE", f"/{chat['id']}")


def test_the_api_needs_the_key_and_the_page_does_not(server):
    assert httpx.get(server.url + "/api/conversations").status_code == 401
    assert httpx.get(server.url + "/api/conversations", headers={"Authorization": "Bearer nope"}).status_code == 401
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert page.headers["cache-control"] == "no-cache" and page.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(server.url + "/ui/app.js").status_code == 200
    escape = httpx.get(server.url + "/ui/%2e%2e/webui.py")  # an encoded ../ is not normalized away by the client
    assert escape.status_code == 404 and "import" not in escape.text


def test_export_then_import_keeps_the_tree_under_new_ids(server):
    chat = ok(api(server, "POST", "", json={"title": "Export me"}), 201)
    root = ok(api(server, "POST", f"/{chat['id']}/messages", json={"role": "user", "content": "a"}), 201)
    ok(api(server, "POST", f"/{chat['id']}/messages", json={"role": "assistant", "content": "b"}), 201)
    ok(api(server, "POST", f"/{chat['id']}/messages",
           json={"role": "assistant", "content": "c", "parent_id": root["id"]}), 201)
    exported = ok(api(server, "GET", f"/{chat['id']}/export"))
    copy = ok(api(server, "POST", "/import", json=exported), 201)
    again = ok(api(server, "GET", f"/{copy['id']}"))
    assert copy["id"] != chat["id"] and again["title"] == "Export me"
    assert [m["content"] for m in again["messages"]] == ["a", "b", "c"]
    new_root = again["messages"][0]["id"]
    assert new_root != root["id"] and [m["parent_id"] for m in again["messages"]] == [None, new_root, new_root]
    assert again["current_leaf"] == again["messages"][2]["id"]
    for conversation in (chat, copy):
        api(server, "DELETE", f"/{conversation['id']}")


GOOD = {"format": "deeproots.conversation", "version": 1, "title": "t", "messages": [
    {"id": "1", "parent_id": None, "role": "user", "content": "hi"},
    {"id": "2", "parent_id": "1", "role": "assistant", "content": "hello"}]}
MALFORMED = {
    "not JSON": b"{\"format\": ",
    "a list": [GOOD],
    "wrong format": {**GOOD, "format": "other.app"},
    "future version": {**GOOD, "version": 2},
    "no title": {key: value for key, value in GOOD.items() if key != "title"},
    "unknown field": {**GOOD, "folder": "x"},
    "unknown role": {**GOOD, "messages": [{"id": "1", "role": "wizard", "content": "hi"}]},
    "content not text": {**GOOD, "messages": [{"id": "1", "role": "user", "content": {"html": "<b>"}}]},
    "parent later": {**GOOD, "messages": GOOD["messages"][::-1]},
    "parent unknown": {**GOOD, "messages": [GOOD["messages"][0], {**GOOD["messages"][1], "parent_id": "9"}]},
    "duplicate id": {**GOOD, "messages": [GOOD["messages"][0], {**GOOD["messages"][1], "id": "1"}]},
    "leaf unknown": {**GOOD, "current_leaf": "7"},
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_imports_are_400_and_store_nothing(server, home, case):
    before = rows(home / "conversations.db", "SELECT (SELECT COUNT(*) FROM conversations), COUNT(*) FROM messages")
    document = MALFORMED[case]
    content = document if isinstance(document, bytes) else json.dumps(document).encode()
    response = api(server, "POST", "/import", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"]
    assert rows(home / "conversations.db",
                "SELECT (SELECT COUNT(*) FROM conversations), COUNT(*) FROM messages") == before


def test_two_server_processes_writing_one_file_lose_nothing(smollm2_path, tmp_path):
    servers = [start_server(smollm2_path, tmp_path) for _ in range(2)]
    try:
        chat = ok(api(servers[0], "POST", "", json={"title": "shared"}), 201)
        written: list[str] = []

        def writer(server, name: str) -> None:
            for index in range(15):
                message = ok(api(server, "POST", f"/{chat['id']}/messages",
                                 json={"role": "user", "content": f"{name}-{index}"}), 201)
                written.append(message["id"])

        threads = [threading.Thread(target=writer, args=(servers[n % 2], f"w{n}")) for n in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stored = rows(tmp_path / "conversations.db",
                      "SELECT id, parent_id, content FROM messages WHERE conversation_id = ? ORDER BY seq", chat["id"])
        assert sorted(row[0] for row in stored) == sorted(written) and len(written) == 90
        # each append read the current leaf and wrote under it in one transaction: one unbroken chain
        assert [row[1] for row in stored] == [None] + [row[0] for row in stored[:-1]]
        for n in range(6):  # each writer's own messages in its order
            mine = [row[2] for row in stored if row[2].startswith(f"w{n}-")]
            assert mine == [f"w{n}-{index}" for index in range(15)]
    finally:
        for server in servers:
            server.stop()


def test_kill_9_during_writes_loses_nothing_committed(smollm2_path, tmp_path):
    server = start_server(smollm2_path, tmp_path)
    chat = ok(api(server, "POST", "", json={"title": "crash"}), 201)
    acknowledged: list[str] = []
    enough = threading.Event()

    def writer() -> None:
        index = 0
        while True:
            try:
                response = api(server, "POST", f"/{chat['id']}/messages",
                               json={"role": "user", "content": f"m{index}" * 200})
            except httpx.HTTPError:
                return  # the server is gone
            if response.status_code != 201:
                return
            acknowledged.append(response.json()["id"])
            index += 1
            if index == 40:
                enough.set()

    threads = [threading.Thread(target=writer) for _ in range(3)]
    for thread in threads:
        thread.start()
    enough.wait(60)
    server.process.kill()  # SIGKILL while the writers keep going
    server.stop()
    for thread in threads:
        thread.join()

    db_path = tmp_path / "conversations.db"
    assert rows(db_path, "PRAGMA integrity_check") == [("ok",)]
    stored = {row[0] for row in rows(db_path, "SELECT id FROM messages")}
    assert len(acknowledged) >= 40 and set(acknowledged) <= stored

    restarted = start_server(smollm2_path, tmp_path)
    try:
        found = ok(api(restarted, "GET", f"/{chat['id']}"))
        assert {m["id"] for m in found["messages"]} == stored
        ok(api(restarted, "POST", f"/{chat['id']}/messages", json={"role": "user", "content": "after"}), 201)
    finally:
        restarted.stop()



def test_model_info_is_what_the_file_says(server, smollm2_path, smollm2_gguf):
    import gguf  # llama.cpp's own reader (the test extra): the independent account of the file
    reader = smollm2_gguf
    field = lambda key: reader.fields[key].contents()
    info = ok(httpx.get(server.url + "/api/model", headers=server.headers))
    assert info["architecture"] == field("general.architecture") == "llama"
    assert "MOSTLY_" + info["quantization"] == gguf.LlamaFileType(field("general.file_type")).name
    assert info["parameters"] == sum(int(tensor.n_elements) for tensor in reader.tensors)
    assert info["context"] == 1024 and info["file_size"] == smollm2_path.stat().st_size  # LiveServer's --ctx
    assert httpx.get(server.url + "/api/model").status_code == 401
    by_id = ok(httpx.get(server.url + "/api/model", params={"id": smollm2_path.stem}, headers=server.headers))
    assert by_id == info
    unknown = httpx.get(server.url + "/api/model", params={"id": "SmolLM2-135M"}, headers=server.headers)
    assert unknown.status_code == 404 and "did you mean" in unknown.json()["error"]["message"]
