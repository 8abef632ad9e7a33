"""Drives phigate's MCP server with the official Python SDK (`mcp` 2.x), for crates/gateway/tests/mcp.rs.

Reads a plan from stdin:
  {"url": "http://127.0.0.1:PORT/mcp"  (Streamable HTTP)  or  "stdio": ["phigate", "mcp", "--stdio"],
   "env": {...} (stdio only), "token": "...", "mode": "legacy" | "2026-07-28",
   "calls": [{"tool": "query", "args": {...}, "cancel_after": 1.5 (optional)}]}
and prints one JSON object: {"protocol": ..., "tools": [names], "results": [{"is_error", "structured", "text"}]}.
A call cancelled after `cancel_after` seconds reports {"cancelled": true}.
"""

import json
import sys

import anyio
import httpx2
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client


def text_of(result):
    return "\n".join(getattr(c, "text", "") for c in result.content)


async def run(plan):
    if "stdio" in plan:
        command, *args = plan["stdio"]
        server = StdioServerParameters(command=command, args=args, env=plan.get("env") or {})
    else:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {plan['token']}"}, timeout=120)
        server = streamable_http_client(plan["url"], http_client=http)
    out = {"results": []}
    async with Client(server, mode=plan.get("mode", "legacy")) as client:
        out["protocol"] = client.protocol_version
        tools = await client.list_tools()
        out["tools"] = [t.name for t in tools.tools]
        for call in plan.get("calls", []):
            after = call.get("cancel_after")
            if after is None:
                r = await client.call_tool(call["tool"], call.get("args", {}))
                out["results"].append(
                    {"is_error": bool(r.is_error), "structured": r.structured_content, "text": text_of(r)}
                )
                continue
            with anyio.move_on_after(after) as scope:
                r = await client.call_tool(call["tool"], call.get("args", {}))
            if scope.cancelled_caught:
                out["results"].append({"cancelled": True})
            else:
                out["results"].append({"cancelled": False, "is_error": bool(r.is_error), "text": text_of(r)})
            if call.get("then_sleep"):
                await anyio.sleep(call["then_sleep"])
    return out


def main():
    plan = json.load(sys.stdin)
    print(json.dumps(anyio.run(run, plan)))


if __name__ == "__main__":
    main()
