// Errors are classified once, here: a gRPC status becomes a FleetError that says whether trying again
// (on this or another endpoint) can help. Activities turn it into a Temporal failure in one place.
// Retryable: the server is unreachable, overloaded, out of time or cancelled — waiting can fix it.
// Everything else is the caller's mistake or a server bug (INTERNAL, UNKNOWN, DATA_LOSS), which the same
// request would only hit again: it fails at once, with the cause.
import { status as Status, type ServiceError } from '@grpc/grpc-js';

const RETRYABLE = new Set<Status>([Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED, Status.RESOURCE_EXHAUSTED, Status.ABORTED, Status.CANCELLED]);

/** The code of a request or response over a gRPC message size limit. */
export const MESSAGE_TOO_LARGE = 'MESSAGE_TOO_LARGE';

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
    // Not a status from the server: the client itself failed on this request, and would again.
    return new FleetError('INTERNAL', `${endpoint}: ${String((error as Error)?.message ?? error)}`, false);
  }
  // gRPC says RESOURCE_EXHAUSTED for a message over a size limit too: the same message would only be refused again.
  if (error.code === Status.RESOURCE_EXHAUSTED && /message larger than max/i.test(error.details || error.message)) {
    return new FleetError(MESSAGE_TOO_LARGE, `${endpoint}: ${error.details || error.message}: a gRPC message is over the size limit of one end; ask for fewer samples at once, or raise the limits (the servers' --max-message-mb)`, false);
  }
  const code = Status[error.code] ?? `CODE_${error.code}`;
  return new FleetError(code, `${endpoint}: ${code}: ${error.details || error.message}`, RETRYABLE.has(error.code));
}
