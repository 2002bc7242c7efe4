// serve.test.mjs: the official `openai` Node client against `strata serve` (started by
// ../serve_node.sh, which passes STRATA_URL, STRATA_API_KEY, STRATA_MODEL and STRATA_GREEDY: the
// text `strata generate` produced for the same prompt at temperature 0).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const baseURL = `${process.env.STRATA_URL}/v1`;
const apiKey = process.env.STRATA_API_KEY;
const model = process.env.STRATA_MODEL;
const greedy = process.env.STRATA_GREEDY;
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0 });
const prompt = 'Once upon a time';

test('models.list names the served model', async () => {
  const page = await client.models.list();
  assert.deepEqual(page.data.map((m) => m.id), [model]);
});

// a 5-token prompt fills no 16-token block, so nothing of it can come from the prefix cache
test('completions: greedy text equals strata generate, usage counted', async () => {
  const r = await client.completions.create({ model, prompt, max_tokens: 40, temperature: 0 });
  assert.equal(r.object, 'text_completion');
  assert.equal(r.choices[0].text, greedy);
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.deepEqual(r.usage, { prompt_tokens: 5, completion_tokens: 40, total_tokens: 45, prompt_tokens_details: { cached_tokens: 0 } });
});

test('completions: streamed deltas add up to the same text, usage at the end', async () => {
  const stream = await client.completions.create({
    model, prompt, max_tokens: 40, temperature: 0, stream: true, stream_options: { include_usage: true },
  });
  let text = '';
  let usage = null;
  let finish = null;
  for await (const chunk of stream) {
    for (const c of chunk.choices) {
      text += c.text;
      if (c.finish_reason) finish = c.finish_reason;
    }
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(text, greedy);
  assert.equal(finish, 'length');
  assert.deepEqual(usage, { prompt_tokens: 5, completion_tokens: 40, total_tokens: 45, prompt_tokens_details: { cached_tokens: 0 } });
});

test('chat: non-streamed and streamed agree (greedy)', async () => {
  const messages = [{ role: 'system', content: 'You tell stories.' }, { role: 'user', content: 'Tell me one.' }];
  const r = await client.chat.completions.create({ model, messages, max_completion_tokens: 12, temperature: 0 });
  assert.equal(r.object, 'chat.completion');
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.equal(r.usage.completion_tokens, 12);
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + 12);
  const stream = await client.chat.completions.create({
    model, messages, max_completion_tokens: 12, temperature: 0, stream: true, stream_options: { include_usage: true },
  });
  let text = '';
  let role = null;
  let usage = null;
  for await (const chunk of stream) {
    for (const c of chunk.choices) {
      if (c.delta.role) role = c.delta.role;
      text += c.delta.content ?? '';
    }
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(role, 'assistant');
  assert.equal(text, r.choices[0].message.content);
  const { prompt_tokens_details: first, ...counts } = r.usage;
  const { prompt_tokens_details: second, ...counts2 } = usage;
  assert.deepEqual(counts2, counts);
  // the repeat finds the first call's prompt in the prefix cache: every full 16-token block before its last token
  assert.equal(first.cached_tokens, 0);
  assert.equal(second.cached_tokens, Math.floor((r.usage.prompt_tokens - 1) / 16) * 16);
});

test('chat: logprobs with top_logprobs', async () => {
  const r = await client.chat.completions.create({
    model, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 3, temperature: 0, logprobs: true, top_logprobs: 2,
  });
  const content = r.choices[0].logprobs.content;
  assert.equal(content.length, 3);
  for (const t of content) {
    assert.equal(t.top_logprobs.length, 2);
    assert.ok(t.logprob <= 0);
    // greedy: the sampled token is the most likely one
    assert.equal(t.token, t.top_logprobs[0].token);
  }
});

test('a bad parameter is an APIError with status 400', async () => {
  await assert.rejects(client.completions.create({ model, prompt, temperature: -1 }), (err) => {
    assert.ok(err instanceof OpenAI.APIError);
    assert.ok(err instanceof OpenAI.BadRequestError);
    assert.equal(err.status, 400);
    assert.equal(err.param, 'temperature');
    assert.equal(err.type, 'invalid_request_error');
    return true;
  });
});

test('a wrong API key is an AuthenticationError (401)', async () => {
  const bad = new OpenAI({ baseURL, apiKey: 'wrong-key', maxRetries: 0 });
  await assert.rejects(bad.models.list(), (err) => {
    assert.ok(err instanceof OpenAI.AuthenticationError);
    assert.equal(err.status, 401);
    return true;
  });
});

test('an unknown model is a NotFoundError (404)', async () => {
  await assert.rejects(client.completions.create({ model: 'no-such-model', prompt }), (err) => {
    assert.ok(err instanceof OpenAI.NotFoundError);
    assert.equal(err.status, 404);
    return true;
  });
});
