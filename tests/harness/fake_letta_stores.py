"""FakeLetta's stores beside agents: conversations (Letta 0.16.2+: histories of an agent of
their own) and folders of files, as 0.16.8 answers them (mixed into FakeLetta)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from tests.harness import letta_replies as replies
from tests.harness.fake_letta_state import FakeAgent, FakeConversation, Raw, Turn

BODY = web.RequestKey("body", object)  # the parsed JSON body
CONVERSATIONS_SINCE = (0, 16, 2)


def json_detail(status: int, detail: Any) -> web.Response:
    """An error as FastAPI answers it."""
    return web.json_response({"detail": detail}, status=status)


@dataclass
class FakeFolder:
    """A folder of files an agent may search (0.16.8's /v1/folders): file name -> metadata."""

    id: str
    name: str
    files: dict[str, Raw] = field(default_factory=dict)
    data: dict[str, bytes] = field(default_factory=dict)  # file id -> the bytes uploaded

    def to_json(self) -> Raw:
        return {"id": self.id, "name": self.name, "description": None, "metadata": None}

    def add(self, filename: str, data: bytes, handling: str) -> Raw:
        """The uploaded file's metadata: an existing file of that name when ``handling`` is
        "skip", else a new one, its name suffixed when taken ("suffix", Letta's default)."""
        if filename in self.files and handling == "skip":
            return self.files[filename]
        name, n = filename, 0
        stem, dot, ext = filename.rpartition(".") if "." in filename else (filename, "", "")
        while name in self.files:
            n += 1
            name = f"{stem}_({n}){dot}{ext}"
        meta = {"id": replies.new_id("file"), "folder_id": self.id, "file_name": name,
                "original_file_name": filename, "processing_status": "completed",
                "file_size": len(data)}  # fmt: skip
        self.files[name] = meta
        self.data[meta["id"]] = data
        return meta


class StoreRoutes:
    """The routes of conversations and folders; FakeLetta holds the state they read."""

    version: str
    has_conversations: bool
    has_folders: bool
    agents: dict[str, FakeAgent]
    conversations: dict[str, FakeConversation]
    folders: dict[str, FakeFolder]
    attached: dict[str, set[str]]
    turns: set[Turn]

    if TYPE_CHECKING:  # FakeLetta's own

        def _agent(self, request: web.Request) -> FakeAgent: ...

        def _agent_json(self, request: web.Request, agent: FakeAgent) -> Raw: ...

        async def _turn(
            self,
            agent: FakeAgent,
            body: Raw,
            request: web.Request,
            streaming: bool,
            conversation: FakeConversation | None,
        ) -> web.StreamResponse: ...

    def add_store_routes(self, add: Callable[..., Any]) -> None:
        for path in ("/v1/conversations/", "/v1/conversations"):
            add("GET", path, self._list_conversations)
            add("POST", path, self._create_conversation)
        add("GET", "/v1/conversations/{conversation_id}", self._get_conversation)
        add("DELETE", "/v1/conversations/{conversation_id}", self._delete_conversation)
        add("GET", "/v1/conversations/{conversation_id}/messages", self._conversation_history)
        add("POST", "/v1/conversations/{conversation_id}/messages", self._conversation_messages)
        add("POST", "/v1/conversations/{conversation_id}/cancel", self._cancel_conversation)
        for path in ("/v1/folders/", "/v1/folders"):
            add("GET", path, self._list_folders)
            add("POST", path, self._create_folder)
        add("PATCH", "/v1/agents/{agent_id}/folders/attach/{folder_id}", self._attach_folder)
        add("POST", "/v1/folders/{folder_id}/upload", self._upload)
        add("GET", "/v1/folders/{folder_id}/files/{file_id}", self._file)

    # -- conversations (0.16.2+) ------------------------------------------------------------

    def _conversation(self, request: web.Request) -> FakeConversation:
        self._conversations_known()
        conversation = self.conversations.get(request.match_info["conversation_id"])
        if conversation is None:  # 0.16.8's words for one never made or deleted
            raise web.HTTPNotFound(text=json.dumps({"detail": "Conversation not found"}),
                                   content_type="application/json")  # fmt: skip
        return conversation

    def _conversations_known(self) -> None:
        """Servers before 0.16.2 have no such route: FastAPI's 404."""
        if not self.has_conversations or replies.release(self.version) < CONVERSATIONS_SINCE:
            raise web.HTTPNotFound(text=json.dumps({"detail": "Not Found"}),
                                   content_type="application/json")  # fmt: skip

    async def _list_conversations(self, request: web.Request) -> web.Response:
        self._conversations_known()
        found = list(self.conversations.values())
        if "agent_id" in request.query:
            found = [c for c in found if c.agent_id == request.query["agent_id"]]
        limit = int(request.query.get("limit", "50"))
        return web.json_response([c.to_json() for c in found[:limit]])

    async def _create_conversation(self, request: web.Request) -> web.Response:
        self._conversations_known()
        agent_id = request.query.get("agent_id")
        if agent_id is None:
            return json_detail(422, [{"loc": ["query", "agent_id"], "msg": "Field required"}])
        if agent_id not in self.agents:
            return json_detail(404, f"Agent with ID {agent_id} not found")
        conversation = FakeConversation(replies.new_id("conv"), agent_id)
        self.conversations[conversation.id] = conversation
        return web.json_response(conversation.to_json())

    async def _get_conversation(self, request: web.Request) -> web.Response:
        return web.json_response(self._conversation(request).to_json())

    async def _delete_conversation(self, request: web.Request) -> web.Response:
        del self.conversations[self._conversation(request).id]
        return web.json_response(None)

    async def _conversation_history(self, request: web.Request) -> web.Response:
        messages = list(self._conversation(request).messages)
        if request.query.get("order", "desc") == "desc":
            messages.reverse()
        return web.json_response(messages[: int(request.query.get("limit", "100"))])

    async def _conversation_messages(self, request: web.Request) -> web.StreamResponse:
        conversation = self._conversation(request)
        agent = self.agents.get(conversation.agent_id)
        if agent is None:
            return json_detail(404, f"Agent with ID {conversation.agent_id} not found")
        body = request[BODY] if isinstance(request[BODY], dict) else {}
        # Streaming is the default here, for every client.
        return await self._turn(agent, body, request, bool(body.get("streaming", True)),
                                conversation)  # fmt: skip

    async def _cancel_conversation(self, request: web.Request) -> web.Response:
        conversation = self._conversation(request)
        # 0.16.8 records the conversation only on the runs of streamed turns.
        turns = [t for t in self.turns if t.conversation is conversation and t.streamed]
        if not turns:
            detail = f"CONFLICT: No active runs to cancel for conversation {conversation.id}"
            return json_detail(409, detail)
        for turn in turns:
            turn.cancel.set()
        return web.json_response({turn.run_id: "cancelled" for turn in turns})

    # -- folders -----------------------------------------------------------------------------

    def _folder(self, request: web.Request) -> FakeFolder:
        folder = self.folders.get(request.match_info["folder_id"]) if self.has_folders else None
        if folder is None:
            detail = "Folder not found" if self.has_folders else "Not Found"
            raise web.HTTPNotFound(text=json.dumps({"detail": detail}),
                                   content_type="application/json")  # fmt: skip
        return folder

    async def _list_folders(self, request: web.Request) -> web.Response:
        if not self.has_folders:
            return json_detail(404, "Not Found")
        found = [f for f in self.folders.values() if request.query.get("name") in (None, f.name)]
        return web.json_response(
            [f.to_json() for f in found[: int(request.query.get("limit", 50))]]
        )

    async def _create_folder(self, request: web.Request) -> web.Response:
        if not self.has_folders:
            return json_detail(404, "Not Found")
        body = request[BODY] if isinstance(request[BODY], dict) else {}
        folder = FakeFolder(replies.new_id("source"), str(body.get("name")))
        self.folders[folder.id] = folder
        return web.json_response(folder.to_json())

    async def _attach_folder(self, request: web.Request) -> web.Response:
        agent, folder = self._agent(request), self._folder(request)
        self.attached[agent.id].add(folder.id)
        return web.json_response(self._agent_json(request, agent))

    async def _upload(self, request: web.Request) -> web.Response:
        folder = self._folder(request)
        form = await request.post()
        upload = form.get("file")
        if not isinstance(upload, web.FileField):
            return json_detail(422, [{"loc": ["body", "file"], "msg": "Field required"}])
        handling = request.query.get("duplicate_handling", "suffix")
        meta = folder.add(upload.filename, upload.file.read(), handling)
        return web.json_response(meta)

    async def _file(self, request: web.Request) -> web.Response:
        folder = self._folder(request)
        for meta in folder.files.values():
            if meta["id"] == request.match_info["file_id"]:
                return web.json_response(meta)
        return json_detail(404, "File not found")
