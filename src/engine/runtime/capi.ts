import { OrtError } from '../../errors.js';
import {
  appendCuda,
  check,
  copyIn,
  copyOut,
  cudaMemory,
  ELEMENT,
  type Handle,
  LOG_ERROR,
  loadOrt,
  OPTIMIZE_ALL,
  type Ort,
  takePointers,
  takeString,
} from './capi-ffi.js';
import { CUDA_DEVICE_ID } from './device-memory.js';
import type {
  DeviceTensor,
  GraphSession,
  GraphSessionOptions,
  HostTensor,
  Runtime,
  Tensor,
  TensorType,
} from './runtime.js';

/**
 * The capi binding (docs/architecture.md §7 Runtimes): ONNX Runtime's C API (capi-ffi.ts) over the
 * library onnxruntime-node ships, run through I/O binding. Host tensors are plain arrays, copied
 * into an OrtValue for the one run that feeds them; outputs are bound to the provider's memory
 * (`Cuda` on CUDA, `Cpu` on the CPU provider) and either copied back to a host tensor and released,
 * or kept as they are, an OrtValue in native memory that the next pass is fed (a device tensor:
 * `GraphSessionOptions.deviceOutputs`). On the CPU provider those stay in ONNX Runtime's memory and
 * are never copied into JS: the same code as on CUDA. Every OrtValue is counted while it lives
 * (`liveValues()`).
 */

/** steerd's provider names, and ONNX Runtime's. */
const PROVIDERS: Record<string, string> = { cpu: 'CPUExecutionProvider', cuda: 'CUDAExecutionProvider' };

const ELEMENT_TYPE = new Map<number, TensorType>([
  [ELEMENT.float32, 'float32'],
  [ELEMENT.int64, 'int64'],
  [ELEMENT.bool, 'bool'],
]);

const BYTES: Record<TensorType, number> = { float32: 4, int64: 8, bool: 1 };

let live = 0;

/** OrtValues this binding holds now (in this thread): inputs during a run, outputs until released. */
export const liveValues = () => live;

const ort = (): Ort => loadOrt();

/** A fresh OrtValue of `type` and `dims`, counted. */
function newValue(o: Ort, type: TensorType, dims: readonly number[]): Handle {
  const out: Handle[] = [null];
  check(
    o.api,
    o.api.CreateTensorAsOrtValue(o.allocator, BigInt64Array.from(dims, BigInt), dims.length, ELEMENT[type], out),
    'CreateTensorAsOrtValue',
  );
  live++;
  return out[0];
}

function releaseValue(o: Ort, v: Handle): void {
  o.api.ReleaseValue(v);
  live--;
}

function dataPointer(o: Ort, v: Handle): Handle {
  const p: Handle[] = [null];
  check(o.api, o.api.GetTensorMutableData(v, p), 'GetTensorMutableData');
  return p[0];
}

/** A host tensor's data in a new OrtValue (one copy; data that does not fill its dims exactly is refused before anything is made). */
function hostValue(o: Ort, t: HostTensor): Handle {
  if (!t.dims.every((d) => Number.isSafeInteger(d) && d >= 0))
    throw new OrtError('CreateTensorAsOrtValue', -1, `dims [${t.dims.join(', ')}] are not sizes`);
  const n = t.dims.reduce((a, b) => a * b, 1);
  if (t.data.byteLength !== n * BYTES[t.type]) {
    const got = t.data.byteLength / BYTES[t.type];
    throw new OrtError('CreateTensorAsOrtValue', -1, `${got} ${t.type} values for dims [${t.dims.join(', ')}] (${n})`);
  }
  const v = newValue(o, t.type, t.dims);
  try {
    copyIn(dataPointer(o, v), t.data);
  } catch (e) {
    releaseValue(o, v);
    throw e;
  }
  return v;
}

/** An OrtValue's element type and dimensions. */
function shapeOf(o: Ort, v: Handle): { type: TensorType; dims: number[] } {
  const { api } = o;
  const info: Handle[] = [null];
  check(api, api.GetTensorTypeAndShape(v, info), 'GetTensorTypeAndShape');
  try {
    const e = [0];
    check(api, api.GetTensorElementType(info[0], e), 'GetTensorElementType');
    const rank = [0];
    check(api, api.GetDimensionsCount(info[0], rank), 'GetDimensionsCount');
    const dims = new BigInt64Array(Number(rank[0]));
    check(api, api.GetDimensions(info[0], dims, dims.length), 'GetDimensions');
    const type = ELEMENT_TYPE.get(e[0]);
    if (!type) throw new OrtError('GetTensorElementType', -1, `an output of element type ${e[0]} is not served`);
    return { type, dims: Array.from(dims, Number) };
  } finally {
    api.ReleaseTensorTypeAndShapeInfo(info[0]);
  }
}

/** An OrtValue's data copied into a host tensor. */
function toHost(o: Ort, v: Handle): HostTensor {
  const { type, dims } = shapeOf(o, v);
  const n = dims.reduce((a, b) => a * b, 1);
  const buf = copyOut(n ? dataPointer(o, v) : null, n * BYTES[type]);
  const data =
    type === 'float32' ? new Float32Array(buf) : type === 'int64' ? new BigInt64Array(buf) : new Uint8Array(buf);
  return { location: 'cpu', type, dims, data };
}

/** An OrtValue the binding keeps (a device tensor): fed to later runs as it is, released by `dispose()`. */
export class OrtValueTensor implements DeviceTensor {
  readonly location = 'ort-value';
  private value: Handle;

  constructor(
    value: Handle,
    readonly dims: readonly number[],
  ) {
    this.value = value;
  }

  /** The native value, to bind (a disposed tensor is an error, never a dangling pointer). */
  get handle(): Handle {
    if (this.value === null) throw new OrtError('BindInput', -1, 'a device tensor was fed after it was disposed');
    return this.value;
  }

  /** Released once; later calls do nothing. */
  dispose(): void {
    if (this.value === null) return;
    releaseValue(ort(), this.value);
    this.value = null;
  }
}

/** A host tensor copied into a device tensor of this binding (an OrtValue in host memory: what the CPU provider's outputs are). */
export function deviceCopy(t: HostTensor): OrtValueTensor {
  const o = ort();
  return new OrtValueTensor(hostValue(o, t), t.dims);
}

/**
 * A device tensor's data copied back into a host tensor, where its memory is host memory (the CPU
 * provider's: tests compare the device path's caches with this); a CUDA tensor is an error.
 */
export function hostCopy(t: OrtValueTensor): HostTensor {
  const o = ort();
  const info: Handle[] = [null];
  check(o.api, o.api.GetTensorMemoryInfo(t.handle, info), 'GetTensorMemoryInfo');
  const name: Handle[] = [null];
  check(o.api, o.api.MemoryInfoGetName(info[0], name), 'MemoryInfoGetName');
  if (name[0] !== 'Cpu')
    throw new OrtError('hostCopy', -1, `a tensor in ${String(name[0])} memory cannot be read here`);
  return toHost(o, t.handle);
}

class CapiSession implements GraphSession {
  readonly runtime: Runtime = capi;
  private binding: Handle;
  private released = false;

  constructor(
    private readonly o: Ort,
    private session: Handle,
    readonly outputNames: readonly string[],
    /** Outputs kept as device tensors. */
    private readonly device: ReadonlySet<string>,
    /** Where device outputs are bound: the provider's memory. */
    private readonly deviceMemory: Handle,
    /** `deviceMemory` is this session's to release (CUDA's; the CPU one is shared). */
    private readonly ownsMemory: boolean,
  ) {
    const b: Handle[] = [null];
    check(o.api, o.api.CreateIoBinding(session, b), 'CreateIoBinding');
    this.binding = b[0];
  }

  async run(feeds: Record<string, Tensor>, fetches?: readonly string[]): Promise<Record<string, Tensor>> {
    if (this.released) throw new OrtError('RunWithBinding', -1, 'the session was released');
    const { api } = this.o;
    const names = fetches ?? this.outputNames;
    // a name bound twice replaces its first binding: fewer values would come back than asked for
    if (new Set(names).size !== names.length)
      throw new OrtError('BindOutputToDevice', -1, `an output is asked for twice (${names.join(', ')})`);
    const temps: Handle[] = [];
    let outs: Handle[] = [];
    try {
      for (const [name, t] of Object.entries(feeds)) {
        let v: Handle;
        if (t.location === 'cpu') {
          v = hostValue(this.o, t);
          temps.push(v);
        } else if (t instanceof OrtValueTensor) v = t.handle;
        else throw new OrtError('BindInput', -1, `input ${name}: a ${t.location} tensor is not this binding's`);
        check(api, api.BindInput(this.binding, name, v), 'BindInput');
      }
      for (const name of names) {
        const memory = this.device.has(name) ? this.deviceMemory : this.o.cpuMemory;
        check(api, api.BindOutputToDevice(this.binding, name, memory), 'BindOutputToDevice');
      }
      check(api, api.RunWithBinding(this.session, null, this.binding), 'RunWithBinding');
      const p: Handle[] = [null];
      const n = [0];
      check(api, api.GetBoundOutputValues(this.binding, this.o.allocator, p, n), 'GetBoundOutputValues');
      outs = takePointers(this.o, p[0], Number(n[0]));
      live += outs.length;
      if (outs.length !== names.length)
        throw new OrtError('GetBoundOutputValues', -1, `${outs.length} outputs for the ${names.length} bound`);
      const result: Record<string, Tensor> = {};
      try {
        // outputs come back in the order they were bound
        for (const [i, name] of names.entries()) {
          const v = outs[i];
          if (this.device.has(name)) {
            result[name] = new OrtValueTensor(v, shapeOf(this.o, v).dims);
            outs[i] = null; // kept: the tensor owns it now
          } else result[name] = toHost(this.o, v);
        }
      } catch (e) {
        // the outputs kept so far go with the failed run (the rest are released below)
        for (const x of Object.values(result)) if (x instanceof OrtValueTensor) x.dispose();
        throw e;
      }
      return result;
    } finally {
      for (const v of [...temps, ...outs]) if (v !== null) releaseValue(this.o, v);
      api.ClearBoundInputs(this.binding);
      api.ClearBoundOutputs(this.binding);
    }
  }

  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    this.o.api.ReleaseIoBinding(this.binding);
    this.o.api.ReleaseSession(this.session);
    if (this.ownsMemory) this.o.api.ReleaseMemoryInfo(this.deviceMemory);
    this.binding = null;
    this.session = null;
  }
}

/** Session options for `o` (released by the caller). */
function sessionOptions(ort: Ort, o: GraphSessionOptions): Handle {
  const { api } = ort;
  const opts: Handle[] = [null];
  check(api, api.CreateSessionOptions(opts), 'CreateSessionOptions');
  const so = opts[0];
  try {
    check(api, api.SetSessionGraphOptimizationLevel(so, OPTIMIZE_ALL), 'SetSessionGraphOptimizationLevel');
    check(api, api.SetSessionLogSeverityLevel(so, LOG_ERROR), 'SetSessionLogSeverityLevel');
    check(api, api.SetIntraOpNumThreads(so, o.threads), 'SetIntraOpNumThreads');
    check(
      api,
      api.AddSessionConfigEntry(so, 'session.intra_op.allow_spinning', o.spinning ? '1' : '0'),
      'AddSessionConfigEntry',
    );
    if (o.provider === 'cuda') appendCuda(ort, so, CUDA_DEVICE_ID);
    return so;
  } catch (e) {
    api.ReleaseSessionOptions(so);
    throw e;
  }
}

function outputNamesOf(ort: Ort, session: Handle): string[] {
  const { api } = ort;
  const count = [0];
  check(api, api.SessionGetOutputCount(session, count), 'SessionGetOutputCount');
  const names: string[] = [];
  for (let i = 0; i < Number(count[0]); i++) {
    const p: Handle[] = [null];
    check(api, api.SessionGetOutputName(session, i, ort.allocator, p), 'SessionGetOutputName');
    names.push(takeString(ort, p[0]));
  }
  return names;
}

export const capi: Runtime = {
  name: 'capi',
  providers: () => {
    const have = ort().providers;
    return Object.entries(PROVIDERS)
      .filter(([, ortName]) => have.includes(ortName))
      .map(([name]) => name);
  },

  async open(model: string | Uint8Array, o: GraphSessionOptions): Promise<GraphSession> {
    if (o.bindingOptions && Object.keys(o.bindingOptions).length) {
      throw new OrtError(
        'CreateSessionOptions',
        -1,
        'the capi binding takes no binding options (onnxruntime-node does)',
      );
    }
    if (!PROVIDERS[o.provider]) {
      throw new OrtError('CreateSessionOptions', -1, `the capi binding runs cpu or cuda, not ${o.provider}`);
    }
    const r = ort();
    const { api } = r;
    const so = sessionOptions(r, o);
    const out: Handle[] = [null];
    try {
      if (typeof model === 'string') check(api, api.CreateSession(r.env, model, so, out), 'CreateSession');
      else check(api, api.CreateSessionFromArray(r.env, model, model.byteLength, so, out), 'CreateSessionFromArray');
    } finally {
      api.ReleaseSessionOptions(so);
    }
    const session = out[0];
    let memory: Handle | undefined;
    try {
      const outputNames = outputNamesOf(r, session);
      const device = new Set(o.deviceOutputs === 'all' ? outputNames : (o.deviceOutputs ?? []));
      // device memory: the CUDA device's on cuda; on the CPU provider, host memory that stays native
      const cuda = o.provider === 'cuda';
      if (cuda) memory = cudaMemory(r, CUDA_DEVICE_ID);
      return new CapiSession(r, session, outputNames, device, memory ?? r.cpuMemory, cuda);
    } catch (e) {
      if (memory) api.ReleaseMemoryInfo(memory);
      api.ReleaseSession(session);
      throw e;
    }
  },

  float32: (data, dims) => ({ location: 'cpu', type: 'float32', dims: [...dims], data }),
  int64: (values, dims) => ({
    location: 'cpu',
    type: 'int64',
    dims: dims ? [...dims] : [values.length],
    data: values instanceof BigInt64Array ? values : BigInt64Array.from(values, BigInt),
  }),
  bool: (value) => ({ location: 'cpu', type: 'bool', dims: [], data: Uint8Array.of(value ? 1 : 0) }),
  liveValues,
};
