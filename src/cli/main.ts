import { existsSync } from 'node:fs';
import { Command, InvalidArgumentError, Option } from 'commander';
import { loadConfig, parseDtype, parseSites } from '../config.js';
import { parseRuntime } from '../engine/runtime/names.js';
import { SteerdError } from '../errors.js';
import { consoleProgress } from './progress.js';

// Each command loads what it needs when it runs: `model tiny` or `--help` does not load the HTTP
// server, the queue and ONNX Runtime.
const server = () => import('../server.js');

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) throw new InvalidArgumentError('expected a positive integer');
  return n;
}

function nonNegativeInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError('expected a non-negative integer');
  return n;
}

const SITES_OPTION = '--hook-sites <sites>';
const SITES_HELP =
  'hook sites steerable and readable, comma-separated: resid_pre,ln1,attn_out,resid_mid,ln2,mlp_out (env STEERD_HOOK_SITES, default all)';
const BINDING_OPTION = '--binding <name>';
const BINDING_HELP =
  'binding of ONNX Runtime: node (onnxruntime-node) or capi (its C API through I/O binding, the KV cache on the device) (env STEERD_BINDING, default capi on cuda, node elsewhere)';
const DTYPE_OPTION = '--dtype <dtype>';
const DTYPE_HELP =
  "the blocks' weights: float32; float16 for GPU providers; int8 or int4 on the cpu provider (each a copy written once beside the checkpoint; env STEERD_DTYPE, default float32)";
const KV_OPTION = '--kv-cache-tokens <n>';
const KV_HELP =
  'tokens of KV cache, all requests together (env STEERD_KV_CACHE_TOKENS; default: STEERD_KV_CACHE_MEMORY, half the memory left after the weights)';

export function program(): Command {
  const cli = new Command('steerd').description('Activation steering for GPT-2 and Llama-family models, over HTTP');
  cli
    .command('serve')
    .description('serve the HTTP API (options also from the environment: see README, configuration)')
    .option(
      '--model <model>',
      'checkpoint directory, hub name (gpt2 … gpt2-xl) or "tiny" (env STEERD_MODEL, default gpt2-xl)',
    )
    .option('--host <host>', 'listen address (env HOST, default 127.0.0.1)')
    .option('--port <port>', 'listen port, 0 for any free one (env PORT, default 8080)', nonNegativeInt)
    .option('--data <dir>', 'vector store directory (env STEERD_DATA, default ./data)')
    .option('--provider <name>', 'execution provider: cpu, cuda, webgpu (env STEERD_PROVIDER, default cpu)')
    .option(BINDING_OPTION, BINDING_HELP)
    .option('--worker', 'with REDIS_URL: also run an engine on the queue in this process', false)
    .option(KV_OPTION, KV_HELP, positiveInt)
    .option(SITES_OPTION, SITES_HELP)
    .option(DTYPE_OPTION, DTYPE_HELP)
    .action(
      async (o: {
        model?: string;
        host?: string;
        port?: number;
        data?: string;
        provider?: string;
        binding?: string;
        worker: boolean;
        kvCacheTokens?: number;
        hookSites?: string;
        dtype?: string;
      }) => {
        const config = loadConfig();
        const { serve } = await server();
        await serve(
          {
            ...config,
            model: o.model ?? config.model,
            host: o.host ?? config.host,
            port: o.port ?? config.port,
            dataDir: o.data ?? config.dataDir,
            provider: o.provider ?? config.provider,
            binding: o.binding ? parseRuntime(o.binding, '--binding') : config.binding,
            worker: o.worker,
            kvCacheTokens: o.kvCacheTokens ?? config.kvCacheTokens,
            hookSites: o.hookSites ? parseSites(o.hookSites, '--hook-sites') : config.hookSites,
            dtype: o.dtype ? parseDtype(o.dtype, '--dtype') : config.dtype,
          },
          consoleProgress(),
        );
      },
    );

  cli
    .command('worker')
    .description('run the engine on the Redis queue (REDIS_URL): one per GPU, on any machine with the model')
    .option('--model <model>', 'checkpoint directory, hub name or "tiny" (env STEERD_MODEL, default gpt2-xl)')
    .option('--provider <name>', 'execution provider (env STEERD_PROVIDER, default cpu)')
    .option(BINDING_OPTION, BINDING_HELP)
    .option(KV_OPTION, KV_HELP, positiveInt)
    .option(SITES_OPTION, SITES_HELP)
    .option(DTYPE_OPTION, DTYPE_HELP)
    .action(
      async (o: {
        model?: string;
        provider?: string;
        binding?: string;
        kvCacheTokens?: number;
        hookSites?: string;
        dtype?: string;
      }) => {
        const config = loadConfig();
        const { runWorker } = await server();
        await runWorker(
          {
            ...config,
            model: o.model ?? config.model,
            provider: o.provider ?? config.provider,
            binding: o.binding ? parseRuntime(o.binding, '--binding') : config.binding,
            kvCacheTokens: o.kvCacheTokens ?? config.kvCacheTokens,
            hookSites: o.hookSites ? parseSites(o.hookSites, '--hook-sites') : config.hookSites,
            dtype: o.dtype ? parseDtype(o.dtype, '--dtype') : config.dtype,
          },
          consoleProgress(),
        );
      },
    );

  const model = cli.command('model').description('prepare model checkpoints');

  model
    .command('tiny')
    .description(
      'write a small deterministic random checkpoint: GPT-2 or a Llama-family one (real vocabulary, nonsense output)',
    )
    .argument('<dir>', 'output directory')
    .addOption(new Option('--arch <arch>', 'model_type').choices(['gpt2', 'llama', 'qwen2', 'mistral']).default('gpt2'))
    .option('--layers <n>', 'transformer blocks', positiveInt, 2)
    .option('--embd <n>', 'hidden size', positiveInt, 64)
    .option('--heads <n>', 'attention heads', positiveInt, 4)
    .option('--kv-heads <n>', 'key/value heads, a divisor of --heads (Llama family; default --heads)', positiveInt)
    .option('--inner <n>', 'MLP width (Llama family; default 3 × --embd)', positiveInt)
    .option('--ctx <n>', 'context length', positiveInt, 128)
    .option('--seed <n>', 'random seed', nonNegativeInt, 0)
    .addOption(
      new Option('--weights-dtype <dtype>', 'the dtype the weights are stored in (Llama family)')
        .choices(['float32', 'bfloat16', 'float16'])
        .default('float32'),
    )
    .option('--shards <n>', 'weights files: more than 1 writes shards and their index (Llama family)', positiveInt, 1)
    .addOption(
      new Option(
        '--tokenizer <kind>',
        "the tokenizer (Llama family): GPT-2's vocab.json + merges.txt, or a tokenizer.json in Llama 3's, Qwen2's or SentencePiece's layout",
      )
        .choices(['gpt2', 'llama3', 'qwen2', 'sentencepiece'])
        .default('gpt2'),
    )
    .addOption(
      new Option('--chat-template <format>', 'a chat template in tokenizer_config.json (any family)').choices([
        'chatml',
        'llama3',
        'llama2',
      ]),
    )
    .action(
      async (
        dir: string,
        o: {
          arch: 'gpt2' | 'llama' | 'qwen2' | 'mistral';
          layers: number;
          embd: number;
          heads: number;
          kvHeads?: number;
          inner?: number;
          ctx: number;
          seed: number;
          weightsDtype: 'float32' | 'bfloat16' | 'float16';
          shards: number;
          tokenizer: 'gpt2' | 'llama3' | 'qwen2' | 'sentencepiece';
          chatTemplate?: 'chatml' | 'llama3' | 'llama2';
        },
      ) => {
        const what = `${o.layers} layers, ${o.embd} wide, ${o.heads} heads`;
        if (o.arch === 'gpt2') {
          if (o.kvHeads || o.inner || o.weightsDtype !== 'float32' || o.shards !== 1 || o.tokenizer !== 'gpt2')
            throw new SteerdError(
              '--kv-heads, --inner, --weights-dtype, --shards and --tokenizer are for the Llama family (--arch llama, qwen2 or mistral)',
              400,
              'bad_option',
            );
          const { writeTinyCheckpoint } = await import('../model/gpt2/tiny.js');
          writeTinyCheckpoint(dir, o);
          if (o.chatTemplate) (await import('../model/chat-templates.js')).writeChatTemplate(dir, o.chatTemplate);
          console.log(`wrote a random GPT-2 checkpoint (${what}) to ${dir}`);
          return;
        }
        const { writeTinyLlamaCheckpoint } = await import('../model/llama/tiny.js');
        writeTinyLlamaCheckpoint(dir, { ...o, modelType: o.arch, dtype: o.weightsDtype });
        if (o.chatTemplate) (await import('../model/chat-templates.js')).writeChatTemplate(dir, o.chatTemplate);
        console.log(
          `wrote a random ${o.arch} checkpoint (${what}, ${o.kvHeads ?? o.heads} key/value heads, ${o.weightsDtype}${o.shards > 1 ? `, ${o.shards} shards` : ''}, ${o.tokenizer} tokenizer) to ${dir}`,
        );
      },
    );

  model
    .command('build')
    .description(
      "write the steerable graph model.onnx beside the checkpoint (for a hub-cache snapshot: in steerd's serving folder), unless it is up to date",
    )
    .argument('<dir>', 'checkpoint directory (config.json, model.safetensors, tokenizer)')
    .option('--force', 'rebuild even when up to date', false)
    .action(async (dir: string, o: { force: boolean }) => {
      const [{ buildGraph }, { servingDir }, { defaultCacheDir }] = await Promise.all([
        import('../model/graph.js'),
        import('../model/hf-cache.js'),
        import('../model/hub.js'),
      ]);
      const t0 = performance.now();
      // a hub-cache snapshot is built where steerd serves it from, never inside the hub cache
      const r = buildGraph(existsSync(dir) ? servingDir(dir, defaultCacheDir(), (m) => console.error(m)) : dir, {
        force: o.force,
      });
      const ms = (performance.now() - t0).toFixed(0);
      console.log(r.built ? `built ${r.file} in ${ms} ms` : `${r.file} is up to date`);
    });

  model
    .command('pull')
    .description(
      'download a checkpoint (GPT-2 or Llama-family, one safetensors file or shards) from the Hugging Face hub into the hub cache, unless it is there already (HF_ENDPOINT overrides the URL; HF_HUB_OFFLINE=1 forbids downloading)',
    )
    .argument('<name>', 'gpt2, gpt2-medium, gpt2-large, gpt2-xl, or a hub id owner/name')
    .option('--revision <rev>', 'branch, tag or commit', 'main')
    .option(
      '--cache <dir>',
      'Hugging Face hub cache (default $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub)',
    )
    .action(async (name: string, o: { revision: string; cache?: string }) => {
      const [{ hubCacheDir }, { pull }] = await Promise.all([
        import('../model/hf-cache.js'),
        import('../model/hub.js'),
      ]);
      const dir = await pull(name, {
        revision: o.revision,
        cache: o.cache ?? hubCacheDir(),
        progress: consoleProgress(),
      });
      console.log(dir);
    });

  return cli;
}

export async function main(argv: string[]): Promise<void> {
  try {
    await program().parseAsync(argv);
  } catch (e) {
    if (e instanceof SteerdError) {
      console.error(`steerd: ${e.message}`);
      process.exitCode = 1;
      return;
    }
    throw e;
  }
}
