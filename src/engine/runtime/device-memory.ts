import { execFileSync } from 'node:child_process';

/** The CUDA device an engine runs on (the provider's default: one GPU per engine). */
export const CUDA_DEVICE_ID = 0;

/** Runs a command and returns its standard output (execFileSync's shape), for tests to replace. */
export type RunCommand = (file: string, args: string[]) => string;

const run: RunCommand = (file, args) =>
  execFileSync(file, args, { encoding: 'utf8', timeout: 5000, stdio: ['ignore', 'pipe', 'ignore'] });

/**
 * The free memory of CUDA device `deviceId` (as this process numbers its devices) in bytes, as the
 * driver reports it through `nvidia-smi --query-gpu=index,uuid,memory.free` (MiB), or undefined
 * where that cannot be known for sure: no nvidia-smi, an answer that is not numbers, a device a MIG
 * partition (nvidia-smi reports the whole GPU's memory), or several GPUs that CUDA may number
 * otherwise than nvidia-smi does (fastest first, unless `CUDA_DEVICE_ORDER=PCI_BUS_ID`).
 * `CUDA_VISIBLE_DEVICES` is followed: its n-th entry (an index or a UUID) is this process's device n.
 * Asked once the sessions have loaded their weights onto the device, it is what the KV cache may
 * take from.
 */
export function cudaFreeMemory(
  deviceId: number,
  command: RunCommand = run,
  env: NodeJS.ProcessEnv = process.env,
): number | undefined {
  let out: string;
  try {
    out = command('nvidia-smi', ['--query-gpu=index,uuid,memory.free', '--format=csv,noheader,nounits']);
  } catch {
    return undefined;
  }
  const gpus = out
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => {
      const [index, uuid, free] = l.split(',').map((x) => x.trim());
      return { index, uuid, mib: Number(free) };
    });
  if (!gpus.length || gpus.some((g) => g.index === undefined || !(g.mib >= 0))) return undefined;
  const visible = env.CUDA_VISIBLE_DEVICES?.split(',').map((x) => x.trim());
  let gpu: (typeof gpus)[number] | undefined;
  if (visible) {
    const want = visible[deviceId];
    if (!want || want.startsWith('MIG-')) return undefined;
    gpu = gpus.find((g) => g.index === want || g.uuid === want);
  } else if (gpus.length === 1 || env.CUDA_DEVICE_ORDER === 'PCI_BUS_ID') {
    gpu = gpus.find((g) => g.index === String(deviceId));
  }
  return gpu && gpu.mib * 2 ** 20;
}
