import { AttrType, DataType, EXTERNAL, ModelProto } from './onnx-proto.js';

export interface Attr {
  name: string;
  type: number;
  i?: number;
  f?: number;
  s?: Uint8Array;
  ints?: number[];
}

export const int = (name: string, i: number): Attr => ({ name, type: AttrType.INT, i });
export const ints = (name: string, v: number[]): Attr => ({ name, type: AttrType.INTS, ints: v });
export const float = (name: string, f: number): Attr => ({ name, type: AttrType.FLOAT, f });
export const str = (name: string, s: string): Attr => ({ name, type: AttrType.STRING, s: Buffer.from(s) });

export type Dim = number | string;

/** A tiny ONNX graph writer: nodes get unique output names, constants become initializers. */
export class GraphWriter {
  nodes: object[] = [];
  initializers: object[] = [];
  inputs: object[] = [];
  outputs: object[] = [];
  /** Operator domains besides the default one that nodes use (ONNX Runtime's `com.microsoft`). */
  domains = new Set<string>();
  private counter = 0;

  /** Adds a node; returns its output names (fresh unless given). */
  op(opType: string, inputs: string[], attrs: Attr[] = [], outputs: string[] | number = 1): string[] {
    const outs =
      typeof outputs === 'number'
        ? Array.from({ length: outputs }, () => `${opType.toLowerCase()}_${this.counter++}`)
        : outputs;
    this.nodes.push({
      op_type: opType,
      name: `${opType}_${this.counter++}`,
      input: inputs,
      output: outs,
      attribute: attrs,
    });
    return outs;
  }

  /** A one-output node of ONNX Runtime's contrib operators (domain `com.microsoft`, version 1). */
  contrib(opType: string, inputs: string[], attrs: Attr[] = [], output?: string): string {
    const out = this.op1(opType, inputs, attrs, output);
    (this.nodes[this.nodes.length - 1] as { domain?: string }).domain = 'com.microsoft';
    this.domains.add('com.microsoft');
    return out;
  }

  /** One-output shorthand. */
  op1(opType: string, inputs: string[], attrs: Attr[] = [], output?: string): string {
    return this.op(opType, inputs, attrs, output ? [output] : 1)[0];
  }

  constF(name: string, values: number[], dims: number[]): string {
    this.initializers.push({
      name,
      data_type: DataType.FLOAT,
      dims,
      raw_data: Buffer.from(new Float32Array(values).buffer),
    });
    return name;
  }

  constI(name: string, values: number[], dims: number[] = [values.length]): string {
    this.initializers.push({
      name,
      data_type: DataType.INT64,
      dims,
      raw_data: Buffer.from(new BigInt64Array(values.map(BigInt)).buffer),
    });
    return name;
  }

  /** An initializer (float32 unless said) stored as external data at `offset` in `location` (beside the graph). */
  external(
    name: string,
    dims: number[],
    location: string,
    offset: number,
    length: number,
    dataType: number = DataType.FLOAT,
  ): string {
    this.initializers.push({
      name,
      data_type: dataType,
      dims,
      data_location: EXTERNAL,
      external_data: [
        { key: 'location', value: location },
        { key: 'offset', value: String(offset) },
        { key: 'length', value: String(length) },
      ],
    });
    return name;
  }

  private valueInfo(name: string, elemType: number, dims?: Dim[]) {
    const tensor_type: Record<string, unknown> = { elem_type: elemType };
    if (dims) {
      tensor_type.shape = { dim: dims.map((d) => (typeof d === 'number' ? { dim_value: d } : { dim_param: d })) };
    }
    return { name, type: { tensor_type } };
  }

  input(name: string, elemType: number, dims?: Dim[]) {
    this.inputs.push(this.valueInfo(name, elemType, dims));
  }

  output(name: string, elemType: number, dims?: Dim[]) {
    this.outputs.push(this.valueInfo(name, elemType, dims));
  }
}

/** Wraps a graph into a serialised ONNX model. */
export function encodeModel(
  g: GraphWriter,
  name: string,
  opts: { opset: number; irVersion: number; producerVersion: string; metadata?: Record<string, string> },
): Uint8Array {
  const model = ModelProto.create({
    ir_version: opts.irVersion,
    producer_name: 'steerd',
    producer_version: opts.producerVersion,
    opset_import: [{ domain: '', version: opts.opset }, ...[...g.domains].map((domain) => ({ domain, version: 1 }))],
    graph: { name, node: g.nodes, initializer: g.initializers, input: g.inputs, output: g.outputs },
    metadata_props: Object.entries(opts.metadata ?? {}).map(([key, value]) => ({ key, value })),
  });
  return ModelProto.encode(model).finish();
}
