// Errors are classified once, here: a gRPC status becomes a FleetError that says whether trying again
// (on this or another endpoint) can help. Activities turn it into a Temporal failure in one place.
import { status as Status, type ServiceError } from '@grpc/grpc-js';

const NON_RETRYABLE = new Set<Status>([
  Status.INVALID_ARGUMENT,
  Status.NOT_FOUND,
  Status.FAILED_PRECONDITION,
  Status.UNIMPLEMENTED,
  Status.OUT_OF_RANGE,
  Status.PERMISSION_DENIED,
  Status.UNAUTHENTICATED,
  Status.ALREADY_EXISTS,
]);

export class FleetError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly retryable: boolean,
  ) {
    super(message);
    this.name = 'FleetError';
  }
}

function isServiceError(error: unknown): error is ServiceError {
  return typeof error === 'object' && error !== null && typeof (error as ServiceError).code === 'number';
}

export function classifyGrpcError(error: unknown, endpoint: string): FleetError {
  if (error instanceof FleetError) return error;
  if (!isServiceError(error)) {
    return new FleetError('UNKNOWN', `${endpoint}: ${String((error as Error)?.message ?? error)}`, true);
  }
  const code = Status[error.code] ?? `CODE_${error.code}`;
  return new FleetError(code, `${endpoint}: ${code}: ${error.details || error.message}`, !NON_RETRYABLE.has(error.code));
}
