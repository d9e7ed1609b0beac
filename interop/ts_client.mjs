// A client we did not write: the official TypeScript SDK against hitl-mcp.
//
//   node ts_client.mjs stdio COMMAND [ARG...]      spawns the server, passing this environment on
//   node ts_client.mjs http URL [--as PRINCIPAL]   streamable HTTP; HITL_TOKEN, if set, is the bearer token
//
// It lists the tools, files a buy_stock request, reads it back with get_request, lists it, checks a refusal
// and withdraws the request. Then, as a task (the experimental tasks of 2025-11-25), it calls buy_stock with
// `client.experimental.tasks.callToolStream`, has the request approved through `hitl approve` (HITL_CLI) as
// another principal, and follows the task to the executed result. The SDK itself validates every
// structured result against the tool's outputSchema. Prints one line per check and exits 1 if any failed.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { ResourceUpdatedNotificationSchema } from "@modelcontextprotocol/sdk/types.js";

const GATED = ["buy_stock", "send_email", "delete_database_records"];
const COMPANIONS = [
  "list_pending", "get_request", "approve", "reject", "wait_for_decision", "cancel_request",
];
const ORDER = { symbol: "googl", quantity: 100, price: 150.0 };
const FILED = { symbol: "GOOGL", quantity: 100, price: 150.0 };

function usage() {
  console.error("usage: ts_client.mjs stdio COMMAND [ARG...] | ts_client.mjs http URL [--as PRINCIPAL]");
  process.exit(2);
}

let serverStderr = "";

function transportFrom(argv) {
  const [mode, target, ...rest] = argv;
  if (mode === "stdio" && target) {
    // The SDK's default environment keeps only PATH, HOME and the like: pass HITL_* on explicitly.
    const transport = new StdioClientTransport({
      command: target, args: rest, env: { ...process.env }, stderr: "pipe",
    });
    transport.stderr?.on("data", (chunk) => {
      serverStderr += chunk.toString();
    });
    return { transport, principal: process.env.HITL_PRINCIPAL ?? "agent" };
  }
  if (mode === "http" && target) {
    const as = rest[0] === "--as" ? rest[1] : undefined;
    const token = process.env.HITL_TOKEN;
    const requestInit = token ? { headers: { Authorization: `Bearer ${token}` } } : undefined;
    const transport = new StreamableHTTPClientTransport(new URL(target), { requestInit });
    return { transport, principal: as ?? process.env.HITL_PRINCIPAL ?? "agent" };
  }
  return usage();
}

function textOf(result) {
  const blocks = result.content ?? [];
  return blocks.filter((block) => block.type === "text").map((block) => block.text).join("\n");
}

const label = process.argv.slice(2, 4).join(" ");
const results = [];

async function check(name, body) {
  try {
    const detail = await body();
    results.push({ name, ok: true });
    console.log(`  ok    ${name}${detail ? `: ${detail}` : ""}`);
  } catch (error) {
    results.push({ name, ok: false });
    console.log(`  FAIL  ${name}: ${error instanceof Error ? error.message : String(error)}`);
  }
}

async function main() {
  const { transport, principal } = transportFrom(process.argv.slice(2));
  const client = new Client({ name: "hitl-interop-ts", version: "1.0.0" });
  console.log(`TypeScript SDK client over ${label}`);
  let connected = false;
  await check("connect (initialize handshake)", async () => {
    await client.connect(transport);
    connected = true;
    const server = client.getServerVersion();
    assert.equal(server?.name, "hitl-mcp");
    assert.ok(client.getServerCapabilities()?.tools, "the server declares the tools capability");
    assert.match(client.getInstructions() ?? "", /never act directly/);
    return `${server.name} ${server.version}`;
  });
  if (!connected) return;

  let requestId;
  let byName = {};
  await check("tools/list: every gated tool and companion, with schemas", async () => {
    const { tools } = await client.listTools();
    byName = Object.fromEntries(tools.map((tool) => [tool.name, tool]));
    for (const name of [...GATED, ...COMPANIONS]) assert.ok(byName[name], `missing tool ${name}`);
    const buy = byName.buy_stock;
    assert.deepEqual([...buy.inputSchema.required].sort(), ["price", "quantity", "symbol"]);
    assert.equal(buy.inputSchema.properties.quantity.type, "integer");
    assert.ok(buy.outputSchema, "buy_stock publishes an outputSchema");
    assert.equal(buy.annotations?.destructiveHint, true);
    assert.equal(byName.get_request.annotations?.readOnlyHint, true);
    return `${tools.length} tools`;
  });

  await check("tools/call buy_stock files a pending request (structured content)", async () => {
    const result = await client.callTool({ name: "buy_stock", arguments: ORDER });
    assert.ok(!result.isError, textOf(result));
    const filed = result.structuredContent;
    assert.equal(filed.status, "pending");
    assert.equal(filed.tool, "buy_stock");
    assert.match(filed.request_id, /^[0-9a-f]+$/);
    assert.equal(filed.preview.total, 15000);
    assert.ok(!Number.isNaN(Date.parse(filed.expires_at)), "expires_at is a date");
    assert.match(textOf(result), /Nothing has run yet/);
    requestId = filed.request_id;
    return requestId;
  });

  await check("tools/call get_request reads it back", async () => {
    assert.ok(requestId, "no request was filed");
    const result = await client.callTool({ name: "get_request", arguments: { request_id: requestId } });
    assert.ok(!result.isError, textOf(result));
    const record = result.structuredContent;
    assert.equal(record.request_id, requestId);
    assert.equal(record.status, "pending");
    assert.deepEqual(record.arguments, FILED);
    assert.equal(record.requested_by, principal);
    assert.deepEqual(record.decisions, []);
    assert.equal(record.result, null);
    return `${record.status}, requested_by ${record.requested_by}`;
  });

  await check("tools/call get_request accepts a unique prefix", async () => {
    const prefix = requestId.slice(0, 12);
    const result = await client.callTool({ name: "get_request", arguments: { request_id: prefix } });
    assert.ok(!result.isError, textOf(result));
    assert.equal(result.structuredContent.request_id, requestId);
  });

  await check("tools/call list_pending shows it", async () => {
    const args = { tool: "buy_stock", limit: 200 };
    const result = await client.callTool({ name: "list_pending", arguments: args });
    assert.ok(!result.isError, textOf(result));
    const ids = result.structuredContent.requests.map((request) => request.request_id);
    assert.ok(ids.includes(requestId), `${requestId} not in ${ids}`);
  });

  await check("tools/call with bad arguments is a tool error naming the field", async () => {
    const result = await client.callTool({ name: "buy_stock", arguments: { ...ORDER, quantity: -5 } });
    assert.equal(result.isError, true);
    assert.match(textOf(result), /quantity/);
  });

  await check("tools/call with an unknown argument: refused or ignored, as the schema says", async () => {
    const result = await client.callTool({ name: "buy_stock", arguments: { ...ORDER, limit_price: 140 } });
    if (byName.buy_stock?.inputSchema.additionalProperties === false) {
      assert.equal(result.isError, true, `the schema forbids it, yet it was filed: ${textOf(result)}`);
      assert.match(textOf(result), /limit_price/);
      return "refused";
    }
    assert.ok(!result.isError, textOf(result));
    const filed = result.structuredContent.request_id;
    const read = await client.callTool({ name: "get_request", arguments: { request_id: filed } });
    assert.deepEqual(read.structuredContent.arguments, FILED, "an undeclared argument was stored");
    await client.callTool({ name: "cancel_request", arguments: { request_id: filed } });
    return "ignored (the schema allows additional properties), never stored";
  });

  await check("tools/call wait_for_decision returns the record when its timeout passes", async () => {
    const args = { request_id: requestId, timeout_seconds: 0.2 };
    const result = await client.callTool({ name: "wait_for_decision", arguments: args });
    assert.ok(!result.isError, textOf(result));
    assert.equal(result.structuredContent.status, "pending");
  });

  const uri = `hitl://requests/${requestId}`;
  let updated;
  await check("resources/read and resources/subscribe (the older handshake) on the request", async () => {
    assert.ok(client.getServerCapabilities()?.resources?.subscribe, "the server declares resources.subscribe");
    const read = await client.readResource({ uri });
    assert.equal(JSON.parse(read.contents[0].text).request_id, requestId);
    updated = new Promise((resolve) => {
      client.setNotificationHandler(ResourceUpdatedNotificationSchema, (notification) => {
        if (notification.params.uri === uri) resolve(performance.now());
      });
    });
    await client.subscribeResource({ uri });
  });

  let cancelledAt;
  await check("tools/call cancel_request withdraws it", async () => {
    const result = await client.callTool({ name: "cancel_request", arguments: { request_id: requestId } });
    cancelledAt = performance.now();
    assert.ok(!result.isError, textOf(result));
    assert.equal(result.structuredContent.status, "cancelled");
  });

  await check("notifications/resources/updated arrives for the subscribed request", async () => {
    const timeout = new Promise((_, reject) => setTimeout(() => reject(new Error("no update within 2 s")), 2000));
    const heardAt = await Promise.race([updated, timeout]);
    return `${Math.max(0, heardAt - cancelledAt).toFixed(0)} ms after the cancel answered`;
  });

  await check("experimental tasks: callToolStream runs a gated call from filing to the executed result", async () => {
    const tasks = client.getServerCapabilities()?.tasks;
    assert.ok(tasks?.requests?.tools?.call, "the server declares tasks.requests.tools.call");
    assert.equal(byName.buy_stock?.execution?.taskSupport, "optional");
    assert.equal(byName.get_request?.execution, undefined, "a companion offers no task");
    const order = { ...ORDER, quantity: 3 };
    const stream = client.experimental.tasks.callToolStream({ name: "buy_stock", arguments: order });
    const seen = [];
    let taskId;
    let result;
    let approved = false;
    for await (const message of stream) {
      seen.push(message.type === "taskStatus" ? message.task.status : message.type);
      if (message.type === "taskCreated") {
        taskId = message.task.taskId;
        assert.equal(message.task.status, "working");
        assert.match(message.task.statusMessage ?? "", /anyone but the requester/);
      } else if (message.type === "taskStatus" && message.task.status === "working" && !approved) {
        approved = true; // once tasks/get has shown it waiting for people
        await approveElsewhere(taskId);
      } else if (message.type === "result") {
        result = message.result;
      } else if (message.type === "error") {
        throw message.error;
      }
    }
    assert.ok(result, `no result; the stream gave ${seen.join(", ")}`);
    assert.ok(!result.isError, textOf(result));
    assert.equal(result.structuredContent.request_id, taskId);
    assert.equal(result.structuredContent.status, "executed");
    assert.equal(result.structuredContent.result.quantity, 3);
    assert.equal(result._meta?.["io.modelcontextprotocol/tool-approval-disposition"], "approved-executed");
    const listed = await client.experimental.tasks.listTasks();
    assert.ok(listed.tasks.some((task) => task.taskId === taskId), "tasks/list shows the caller's task");
    return seen.join(" → ");
  });

  await client.close();
}

// The approval a person makes elsewhere: the CLI on the same store, as a principal other than the caller.
async function approveElsewhere(requestId) {
  const cli = process.env.HITL_CLI;
  assert.ok(cli, "HITL_CLI names the hitl command");
  const args = ["approve", requestId, "--as", "interop-approver", "--reason", "interop", "--yes", "--json"];
  const { stdout } = await promisify(execFile)(cli, args, { env: process.env });
  assert.equal(JSON.parse(stdout).status, "executed");
}

const deadline = setTimeout(() => {
  console.log(`  FAIL  ${label}: no answer within 60 s`);
  process.exit(1);
}, 60_000);
try {
  await main();
} catch (error) {
  results.push({ name: "client", ok: false });
  console.log(`  FAIL  client: ${error instanceof Error ? error.stack : String(error)}`);
}
clearTimeout(deadline);
const failed = results.filter((result) => !result.ok).length;
if (failed > 0 && serverStderr) console.log(`server stderr:\n${serverStderr}`);
const verdict = failed === 0 ? "PASS" : "FAIL";
console.log(`${verdict} ${label}: ${results.length - failed} of ${results.length} checks passed`);
process.exit(failed === 0 && results.length > 0 ? 0 : 1);
