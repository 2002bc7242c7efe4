// inference_client.mjs: small @grpc/grpc-js helpers for strata.v1.Inference tests: the service
// constructor (proto from STRATA_PROTO_DIR), promise wrappers for unary calls and whole Generate
// streams, and reading one sample from a Prometheus text page.
import path from 'node:path';
import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';

const def = protoLoader.loadSync(path.join(process.env.STRATA_PROTO_DIR, 'strata/v1/inference.proto'), {
  keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true,
});
export const { Inference } = grpc.loadPackageDefinition(def).strata.v1;
export { grpc };

// bearer: metadata carrying "authorization: Bearer KEY"
export const bearer = (key) => {
  const md = new grpc.Metadata();
  md.set('authorization', `Bearer ${key}`);
  return md;
};

export const unary = (c, method, req, md = new grpc.Metadata()) =>
  new Promise((resolve, reject) => c[method](req, md, (err, resp) => (err ? reject(err) : resolve(resp))));

// generate: the whole stream: its messages, or the error it ended with
export const generate = (c, req, md = new grpc.Metadata()) =>
  new Promise((resolve, reject) => {
    const msgs = [];
    const call = c.Generate(req, md);
    call.on('data', (m) => msgs.push(m));
    call.on('error', reject);
    call.on('end', () => resolve(msgs));
  });

// metricSum: the sum of the samples of family NAME at URL/metrics whose labels contain LABEL ("" for all)
export const metricSum = async (url, name, label = '') => {
  const text = await (await fetch(`${url}/metrics`)).text();
  let sum = 0;
  for (const l of text.split('\n')) {
    if (l.startsWith('#')) continue;
    const m = l.match(/^([^{ ]+)(\{[^}]*\})? (\S+)$/);
    if (m && m[1] === name && (m[2] || '').includes(label)) sum += Number(m[3]);
  }
  return sum;
};

export const ids = (s) => s.trim().split(/\s+/).map(Number);
