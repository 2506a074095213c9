// Test driver (cmd/brokerd TestTypeScriptMCPExample): the official SDK's client starts the example
// MCP server over stdio, lists its tools and calls `search`; prints one JSON line.
// node drive-mcp.js SERVER_JS QUERY
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";

const [serverJs, query] = process.argv.slice(2);
const env: Record<string, string> = {};
for (const [k, v] of Object.entries(process.env)) if (v !== undefined) env[k] = v;
const client = new Client({ name: "drive-mcp", version: "0.0.0" });
await client.connect(new StdioClientTransport({ command: process.execPath, args: [serverJs], env, stderr: "inherit" }));
const tools = (await client.listTools()).tools.map((t) => t.name);
const res = await client.callTool({ name: "search", arguments: { query, numResults: 3 } });
console.log(JSON.stringify({ tools, isError: res.isError ?? false, content: res.content, structured: res.structuredContent }));
await client.close();
