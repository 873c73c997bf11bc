#!/usr/bin/env node
// A ganserve client in another language: Node.js with @grpc/grpc-js, built from protos/ganserve/v1/generator.proto
// alone (no Python, no generated code). Calls every RPC of ganserve.v1.GeneratorService and prints one line each.
//
//   npm ci                                  # in this folder
//   node client.js [host:port]              # default: $GANSERVE_TARGET, then localhost:50051
//   GANSERVE_TOKEN=...                      # sent as "authorization: Bearer ..." when set
//
// Exit status 0 when every call answered as expected, 1 otherwise.
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'protos');
const target = process.argv[2] || process.env.GANSERVE_TARGET || 'localhost:50051';

const definition = protoLoader.loadSync('ganserve/v1/generator.proto', {
  includeDirs: [PROTO_ROOT], keepCase: true, longs: String, enums: String, defaults: true, oneofs: true,
});
const { GeneratorService } = grpc.loadPackageDefinition(definition).ganserve.v1;
const client = new GeneratorService(target, grpc.credentials.createInsecure(), {
  'grpc.max_receive_message_length': 64 << 20,
});
const metadata = new grpc.Metadata();
if (process.env.GANSERVE_TOKEN) metadata.set('authorization', `Bearer ${process.env.GANSERVE_TOKEN}`);

const deadline = () => new Date(Date.now() + 60000);
const call = (method, request) => new Promise((resolve, reject) => {
  client[method](request, metadata, { deadline: deadline() }, (err, reply) => (err ? reject(err) : resolve(reply)));
});

// Tensor <-> typed array (row-major, little-endian; protos/ganserve/v1/generator.proto, message Tensor).
function float32Tensor(values, shape) {
  const buf = Buffer.alloc(values.length * 4);
  values.forEach((v, i) => buf.writeFloatLE(v, i * 4));
  return { shape, dtype: 'FLOAT32', data: buf };
}
function decode(tensor) {
  const n = tensor.shape.reduce((a, b) => a * Number(b), 1);
  const out = tensor.dtype === 'UINT8' ? new Uint8Array(n) : new Float64Array(n);
  for (let i = 0; i < n; i++) {
    out[i] = tensor.dtype === 'UINT8' ? tensor.data[i] : tensor.data.readFloatLE(i * 4);
  }
  return out;
}
const range = (a) => `[${Math.min(...a).toFixed(3)}, ${Math.max(...a).toFixed(3)}]`;

async function main() {
  let failures = 0;
  const step = async (name, fn) => {
    try {
      console.log(`${name.padEnd(20)} ${await fn()}`);
    } catch (err) {
      failures += 1;
      console.log(`${name.padEnd(20)} FAILED ${err.code !== undefined ? grpc.status[err.code] : ''} ${err.details || err.message}`);
    }
  };

  const { models } = await call('ListModels', { all_versions: false });
  const generators = models.filter((m) => m.kind !== 'evaluator' && m.data_kind === 'IMAGE');
  const uncond = generators.find((m) => !m.capabilities.conditional);
  const cond = generators.find((m) => m.capabilities.conditional);
  await step('ListModels', async () => `${models.length} models: ${models.map((m) => `${m.name}@${m.version}`).join(', ')}`);
  if (!uncond) throw new Error('the server serves no unconditional image model');

  await step('GetModel', async () => {
    const m = await call('GetModel', { model: uncond.name });
    return `${m.name}@${m.version} kind=${m.kind} latent=${m.latent_dim} shape=[${m.output_shape}] ` +
      `range=[${m.value_min}, ${m.value_max}]`;
  });
  let first;
  await step('Sample', async () => {
    const r = await call('Sample', { model: uncond.name, n: 4, seed: '42', return_latents: true });
    first = r;
    return `${r.model} seed=${r.seed} samples=[${r.samples.shape}] ${r.samples.dtype} values ${range(decode(r.samples))}`;
  });
  if (cond) {
    await step('SampleConditional', async () => {
      const k = cond.num_classes;
      const soft = Array.from({ length: k }, (_, i) => (i < 2 ? 0.5 : 0));
      const hard = await call('SampleConditional', { model: cond.name, n: 3, seed: '1', labels: [k - 1], encoding: 'ENCODING_PNG' });
      const r = await call('SampleConditional', { model: cond.name, n: 2, seed: '1', soft_labels: float32Tensor(soft, [1, k]) });
      return `${hard.model} label ${k - 1}: ${hard.png.length} PNGs (${hard.png[0].length} bytes); soft labels: ` +
        `samples=[${r.samples.shape}] conditions=[${r.conditions.shape}]`;
    });
  }
  await step('SampleStream', async () => new Promise((resolve, reject) => {
    const starts = [];
    let count = 0;
    let head = null;
    const stream = client.SampleStream({ model: uncond.name, n: 1000, seed: '42', chunk_size: 256 }, metadata,
      { deadline: deadline() });
    stream.on('data', (chunk) => {
      if (head === null) head = chunk.samples.data.subarray(0, first.samples.data.length);
      starts.push(chunk.start);
      count += Number(chunk.samples.shape[0]);
    });
    stream.on('error', reject);
    stream.on('end', () => {
      const same = head !== null && Buffer.compare(head, first.samples.data) === 0;
      if (!same) reject(new Error('the stream\'s first samples differ from Sample with the same seed'));
      resolve(`${count} samples in ${starts.length} chunks starting at [${starts}]; first 4 equal Sample: ${same}`);
    });
  }));
  await step('Interpolate', async () => {
    const r = await call('Interpolate', { model: uncond.name, endpoints: [{ seed: '1' }, { seed: '2' }], steps: 5,
      method: 'SLERP' });
    return `${r.model} ${r.samples.shape[0]} points, t=[${r.t.map((t) => t.toFixed(2))}]`;
  });
  if (uncond.capabilities.invertible || uncond.capabilities.optimizable) {
    await step('Invert', async () => {
      const r = await call('Invert', { model: uncond.name, images: first.samples, steps: 10 });
      return `${r.model} method=${r.method} steps=${r.steps} mse=[${r.mse.map((m) => m.toExponential(2))}]`;
    });
  } else {
    await step('Invert', async () => {
      try {
        await call('Invert', { model: uncond.name, images: first.samples });
      } catch (err) {
        if (err.code === grpc.status.FAILED_PRECONDITION) return `FAILED_PRECONDITION as documented: ${err.details}`;
        throw err;
      }
      throw new Error('expected FAILED_PRECONDITION');
    });
  }
  await step('EvaluateDivergence', async () => {
    const counts = (v) => ({ shape: [v.length], dtype: 'INT64', data: Buffer.from(new BigInt64Array(v.map(BigInt)).buffer) });
    const r = await call('EvaluateDivergence', {
      p: { samples: counts([30, 20, 10]), histogram: true }, q: { samples: counts([10, 20, 30]), histogram: true },
      metrics: ['js', 'tv'], seed: '0',
    });
    return r.results.map((x) => `${x.metric}=${x.value.toFixed(4)} [${x.ci_low.toFixed(4)}, ${x.ci_high.toFixed(4)}] ${x.unit}`)
      .join('; ');
  });
  await step('(bad input)', async () => {
    try {
      await call('Sample', { model: uncond.name, n: 0 });
    } catch (err) {
      if (err.code === grpc.status.INVALID_ARGUMENT) return `INVALID_ARGUMENT: ${err.details}`;
      throw err;
    }
    throw new Error('n = 0 was accepted');
  });
  client.close();
  return failures;
}

main().then((failures) => process.exit(failures ? 1 : 0)).catch((err) => {
  console.error(`error: ${err.details || err.message}`);
  process.exit(1);
});
