"""Drop the usage chunk a client did not ask for (docs/llm.md).

The gateway asks the backend for usage in every (chat) completions stream (`_usage`'s include_usage
merge), so a stream whose client sent no `stream_options.include_usage: true` ends with an event the
client did not ask for: `data: {..., "choices": [], "usage": {...}}`. One Lua filter removes it:

- on the request it reads `x-meshgate-stream` and `x-meshgate-stream-options` (the body's `stream` and
  `stream_options`, set by `meshgate.llm.stream`), removes the latter, and marks a streaming request
  whose client did not ask for usage in the dynamic metadata `meshgate.usage_chunk: {drop: "1"}`;
- on the response of such a request (`text/event-stream` only) it rewrites each body chunk as it passes
  (`bodyChunks`, `setBytes`): complete events (ended by a blank line) go on, except one with an empty
  `choices` and a `usage`; an incomplete event at the end of a chunk is held until the next chunk ends it
  (an event split across chunks; events end with a blank line, LF or CRLF; past 64 KiB without an end, what
  is held goes on as it is). Nothing else is held: time to first token is unchanged.

It sits before `meshgate.llm.usage_json` in the chain: on the response Envoy runs the filters in reverse
order, so `meshgate.llm.usage_sse` reads the usage of that event before this filter drops it.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from meshgate import contract

from ._pb import pack

__all__ = ["OPTIONS_HEADER", "USAGE_CHUNK_FILTER", "usage_chunk_filter"]

USAGE_CHUNK_FILTER = "meshgate.llm.usage_chunk"
OPTIONS_HEADER = contract.STREAM_OPTIONS_HEADER
"""The request body's `stream_options` as Envoy's formatter writes it (set by `meshgate.llm.stream`,
removed by this filter before the request goes on)."""

_LUA = """
local NS = "meshgate.usage_chunk"
local HOLD_MAX = 65536

function envoy_on_request(handle)
  local headers = handle:headers()
  local stream = headers:get("{stream}")
  local options = headers:get("{options}") or ""
  headers:remove("{options}")
  if stream == "true" and not string.find(options, '"include_usage"%s*:%s*true') then
    handle:streamInfo():dynamicMetadata():set(NS, "drop", "1")
  end
end

local function is_usage(event)
  return string.find(event, '"choices"%s*:%s*%[%s*%]') ~= nil
     and string.find(event, '"usage"%s*:%s*{') ~= nil
end

function envoy_on_response(handle)
  local marked = handle:streamInfo():dynamicMetadata():get(NS)
  if marked == nil or marked["drop"] ~= "1" then
    return
  end
  local kind = handle:headers():get("content-type") or ""
  if not string.find(kind, "text/event-stream", 1, true) then
    return
  end
  local held = ""
  for chunk in handle:bodyChunks() do
    local size = chunk:length()
    local data = size > 0 and held .. chunk:getBytes(0, size) or held
    local out = {}
    local from = 1
    while true do
      local first, last = string.find(data, "\\r?\\n\\r?\\n", from)
      if first == nil then
        break
      end
      local event = string.sub(data, from, last)
      if not is_usage(event) then
        out[#out + 1] = event
      end
      from = last + 1
    end
    held = string.sub(data, from)
    if #held > HOLD_MAX then  -- no event ends in sight: not an SSE stream to edit, let it all through
      out[#out + 1] = held
      held = ""
    end
    chunk:setBytes(table.concat(out))
  end
end
"""
_LUA = _LUA.replace("{stream}", contract.STREAM_HEADER).replace("{options}", OPTIONS_HEADER)


def usage_chunk_filter() -> hcm_pb2.HttpFilter:
    """The Lua filter, disabled until a route enables it (with the other usage filters)."""
    source = base_pb2.DataSource(inline_string=_LUA)
    config = lua_pb2.Lua(default_source_code=source)
    return hcm_pb2.HttpFilter(name=USAGE_CHUNK_FILTER, typed_config=pack(config), disabled=True)
