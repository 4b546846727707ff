// One place loads the contract, with one set of proto-loader options, for every client and test.
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

export const PROTO_ROOT = path.resolve(__dirname, '..', '..', '..', 'proto');

const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_ROOT],
};

type ServiceConstructor = grpc.ServiceClientConstructor;

export interface Services {
  Denoiser: ServiceConstructor;
  Verifier: ServiceConstructor;
  Health: ServiceConstructor;
}

let loaded: Services | undefined;

export function services(): Services {
  if (!loaded) {
    const definition = protoLoader.loadSync(
      ['noisesearch/v1/noisesearch.proto', 'grpc/health/v1/health.proto'],
      LOADER_OPTIONS,
    );
    const root = grpc.loadPackageDefinition(definition) as any;
    loaded = {
      Denoiser: root.noisesearch.v1.Denoiser,
      Verifier: root.noisesearch.v1.Verifier,
      Health: root.grpc.health.v1.Health,
    };
  }
  return loaded;
}
