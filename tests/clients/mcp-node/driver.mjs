// Drives phigate's MCP server with the official TypeScript SDK, for crates/gateway/tests/mcp.rs.
// Reads the same plan as ../mcp/driver.py from stdin ({url | stdio, env, token, calls}) and
// prints {protocol, tools, results}. A call with cancel_after (seconds) is aborted then.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';

const chunks = [];
for await (const c of process.stdin) chunks.push(c);
const plan = JSON.parse(Buffer.concat(chunks).toString('utf8'));

const transport = plan.stdio
  ? new StdioClientTransport({ command: plan.stdio[0], args: plan.stdio.slice(1), env: { ...process.env, ...(plan.env || {}) }, stderr: 'inherit' })
  : new StreamableHTTPClientTransport(new URL(plan.url), { requestInit: { headers: { Authorization: `Bearer ${plan.token}` } } });
const client = new Client({ name: 'phigate-test', version: '0.0.0' });
await client.connect(transport);
const out = { protocol: transport.protocolVersion ?? null, results: [] };
out.tools = (await client.listTools()).tools.map((t) => t.name);
const text = (r) => (r.content || []).map((c) => c.text || '').join('\n');
for (const call of plan.calls || []) {
  if (call.cancel_after === undefined) {
    const r = await client.callTool({ name: call.tool, arguments: call.args || {} });
    out.results.push({ is_error: !!r.isError, structured: r.structuredContent ?? null, text: text(r) });
    continue;
  }
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), call.cancel_after * 1000);
  try {
    const r = await client.callTool({ name: call.tool, arguments: call.args || {} }, undefined, { signal: ac.signal, timeout: 600000 });
    out.results.push({ cancelled: false, is_error: !!r.isError, text: text(r) });
  } catch (e) {
    out.results.push({ cancelled: ac.signal.aborted, error: String(e) });
  }
  clearTimeout(timer);
  if (call.then_sleep) await new Promise((r) => setTimeout(r, call.then_sleep * 1000));
}
await client.close();
console.log(JSON.stringify(out));
