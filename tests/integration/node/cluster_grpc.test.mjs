// cluster_grpc.test.mjs: @grpc/grpc-js against strata-coordinator's gRPC strata.v1.Inference API, with
// stories260K workers behind it (started by ../cluster_grpc.sh). Environment: STRATA_PROTO_DIR,
// STRATA_MODEL; the plain coordinator STRATA_GRPC (Inference) and STRATA_URL (HTTP, for /metrics); the
// keyed TLS coordinator STRATA_GRPC_TLS, STRATA_TLS_CA, STRATA_TEST_API_KEY; references from a local
// engine: STRATA_GREEDY (`strata generate`, 40 tokens at temperature 0), STRATA_TOKENS and
// STRATA_TOKENS_PLAIN (`strata tokenize` with and without --no-special); STRATA_WORKER_PIDS (worker-0,
// worker-1: the migration test kills one, the last test the other).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { Inference, grpc, bearer, unary, generate, metricSum, ids } from './inference_client.mjs';

const client = new Inference(process.env.STRATA_GRPC, grpc.credentials.createInsecure());
const url = process.env.STRATA_URL;
const model = process.env.STRATA_MODEL;
const greedy = process.env.STRATA_GREEDY;
const prompt = 'Once upon a time';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

test('Health reports SERVING', async () => {
  assert.equal((await unary(client, 'Health', {})).status, 'SERVING');
});

test('ListModels names the served model', async () => {
  const r = await unary(client, 'ListModels', {});
  assert.equal(r.models.length, 1);
  assert.equal(r.models[0].id, model);
  assert.ok(r.models[0].max_model_len > 40);
});

test('Tokenize equals strata tokenize, with and without special handling', async () => {
  const r = await unary(client, 'Tokenize', { model, text: prompt });
  assert.deepEqual(r.ids, ids(process.env.STRATA_TOKENS));
  const plain = await unary(client, 'Tokenize', { text: prompt, add_special: false });
  assert.deepEqual(plain.ids, ids(process.env.STRATA_TOKENS_PLAIN));
});

test('Generate streams the greedy text of a local engine, one token per message, through the router', async () => {
  const before = await metricSum(url, 'strata:coordinator_requests_total', 'outcome="success"');
  const msgs = await generate(client, { model, prompt, params: { max_tokens: 40, temperature: 0 }, request_id: 'c-1' });
  assert.equal(msgs.map((m) => m.text).join(''), greedy);
  assert.equal(msgs.flatMap((m) => m.tokens).length, 40);
  assert.ok(msgs.length > 1, 'a stream, not one message');
  for (const m of msgs) assert.equal(m.request_id, 'c-1');
  const last = msgs[msgs.length - 1];
  assert.equal(last.finish_reason, 'length');
  assert.equal(last.usage.prompt_tokens, ids(process.env.STRATA_TOKENS).length);
  assert.equal(last.usage.completion_tokens, 40);
  // it went through the coordinator's request path (the same counter HTTP requests feed)
  assert.equal(await metricSum(url, 'strata:coordinator_requests_total', 'outcome="success"'), before + 1);
});

test('Generate: prompt_ids, chat messages and a stop string', async () => {
  const byIds = await generate(client, {
    prompt_ids: { ids: ids(process.env.STRATA_TOKENS) }, params: { max_tokens: 40, temperature: 0, logprobs: 2 },
  });
  assert.equal(byIds.map((m) => m.text).join(''), greedy);
  for (const t of byIds.flatMap((m) => m.tokens)) {
    assert.equal(t.top_logprobs.length, 2);
    assert.equal(t.top_logprobs[0].token_id, t.token_id); // greedy: the most likely one
  }
  const stop = greedy.slice(10, 16);
  const stopped = await generate(client, { prompt, params: { max_tokens: 40, temperature: 0, stop: [stop] } });
  assert.equal(stopped.map((m) => m.text).join(''), greedy.slice(0, greedy.indexOf(stop)));
  assert.equal(stopped[stopped.length - 1].finish_reason, 'stop');
  const chat = await generate(client, {
    messages: { messages: [{ role: 'user', content: 'Tell me a story.' }] }, params: { max_tokens: 8, temperature: 0 },
  });
  assert.equal(chat[chat.length - 1].usage.completion_tokens, 8);
});

test('bad requests get the HTTP API message as INVALID_ARGUMENT / NOT_FOUND', async () => {
  await assert.rejects(generate(client, { prompt, params: { temperature: 150 } }), (e) => {
    assert.equal(e.code, grpc.status.INVALID_ARGUMENT);
    assert.match(e.details, /'temperature' must be in \[0, 100\], got 150/);
    return true;
  });
  await assert.rejects(generate(client, { model: 'nope', prompt }), { code: grpc.status.NOT_FOUND });
});

test('a cancelled stream aborts its Generate call on the worker', async () => {
  const aborts = await metricSum(url, 'strata:coordinator_requests_total', 'outcome="abort"');
  await new Promise((resolve, reject) => {
    const call = client.Generate({ prompt: 'cancel me', params: { max_tokens: 400, ignore_eos: true } });
    call.once('data', () => { call.cancel(); resolve(); });
    call.on('error', (e) => (e.code === grpc.status.CANCELLED ? undefined : reject(e)));
    call.on('end', () => reject(new Error('the stream finished before it was cancelled')));
  });
  let n = aborts;
  for (let i = 0; i < 50 && n === aborts; i++) {
    await sleep(100);
    n = await metricSum(url, 'strata:coordinator_requests_total', 'outcome="abort"');
  }
  assert.equal(n, aborts + 1);
  // the workers report (Events, every 200 ms) that nothing runs any more
  let running = 1;
  for (let i = 0; i < 50 && running !== 0; i++) {
    await sleep(100);
    running = await metricSum(url, 'strata:worker_running');
  }
  assert.equal(running, 0);
});

test('API keys and TLS: UNAUTHENTICATED without or with a wrong key; Health needs none', async () => {
  const tls = new Inference(process.env.STRATA_GRPC_TLS,
    grpc.credentials.createSsl(fs.readFileSync(process.env.STRATA_TLS_CA)));
  assert.equal((await unary(tls, 'Health', {})).status, 'SERVING');
  await assert.rejects(unary(tls, 'ListModels', {}), { code: grpc.status.UNAUTHENTICATED });
  await assert.rejects(generate(tls, { prompt, params: { max_tokens: 2 } }, bearer('wrong-key')), (e) => {
    assert.equal(e.code, grpc.status.UNAUTHENTICATED);
    assert.match(e.details, /API key/);
    return true;
  });
  await assert.rejects(unary(tls, 'Tokenize', { text: prompt }, bearer('wrong-key')),
    { code: grpc.status.UNAUTHENTICATED });
  const md = bearer(process.env.STRATA_TEST_API_KEY);
  assert.equal((await unary(tls, 'ListModels', {}, md)).models[0].id, model);
  const msgs = await generate(tls, { prompt, params: { max_tokens: 40, temperature: 0 } }, md);
  assert.equal(msgs.map((m) => m.text).join(''), greedy);
  tls.close();
});

const pids = process.env.STRATA_WORKER_PIDS.trim().split(/\s+/).map(Number);
const kill = (pid) => { try { process.kill(pid, 'SIGKILL'); } catch { /* gone already */ } };

// running: the coordinator's strata:worker_running per worker id (from the workers' Events streams)
const running = async () => {
  const text = await (await fetch(`${url}/metrics`)).text();
  const out = {};
  for (const m of text.matchAll(/^strata:worker_running\{worker="([^"]+)"\} (\S+)$/gm)) out[m[1]] = Number(m[2]);
  return out;
};

test('a worker killed mid-stream: every gRPC stream completes with the text of an undisturbed run', async () => {
  const n = 32;
  const maxTokens = Number(process.env.CLUSTER_GRPC_TOKENS || 512); // enough that the kill lands mid-stream
  const req = (i) => ({
    prompt: `Once upon a time, child ${i}`, params: { max_tokens: maxTokens, temperature: 0, ignore_eos: true },
  });
  const text = (msgs) => msgs.map((m) => m.text).join('');
  const want = (await Promise.all([...Array(n).keys()].map((i) => generate(client, req(i))))).map(text);
  const migrated = await metricSum(url, 'strata:migrations_total', 'outcome="migrated"');
  let begun = 0;
  let markBegun;
  const allBegun = new Promise((r) => { markBegun = r; });
  const got = Promise.all([...Array(n).keys()].map((i) => new Promise((resolve, reject) => {
    const msgs = [];
    const call = client.Generate(req(i));
    call.on('data', (m) => { if (msgs.push(m) === 1 && ++begun === n) markBegun(); });
    call.on('error', reject);
    call.on('end', () => resolve(msgs));
  })));
  await allBegun;
  // a report that shows this run (the Events streams lag up to 200 ms behind), then the busiest worker
  let r = await running();
  for (let i = 0; i < 30 && Object.values(r).reduce((a, b) => a + b, 0) !== n; i++) {
    await sleep(100);
    r = await running();
  }
  const victim = Object.keys(r).sort((a, b) => r[b] - r[a])[0];
  assert.ok(r[victim] > 0, `a worker is running requests: ${JSON.stringify(r)}`);
  const pid = pids[Number(victim.replace('worker-', ''))];
  console.log(`killing ${victim} (pid ${pid}); running ${JSON.stringify(r)}`);
  kill(pid);
  const msgs = await got;
  for (let i = 0; i < n; i++) {
    assert.equal(text(msgs[i]), want[i], `stream ${i}`);
    assert.equal(msgs[i][msgs[i].length - 1].finish_reason, 'length');
  }
  assert.ok(await metricSum(url, 'strata:migrations_total', 'outcome="migrated"') > migrated, 'some stream moved');
});

test('with every worker gone, Generate is UNAVAILABLE with the router\'s reason', async () => {
  for (const pid of pids) kill(pid);
  await sleep(500);
  await assert.rejects(generate(client, { prompt, params: { max_tokens: 2 } }), (e) => {
    assert.equal(e.code, grpc.status.UNAVAILABLE);
    assert.match(e.details, /No worker can take this request/);
    return true;
  });
});

test.after(() => client.close());
