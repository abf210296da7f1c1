/**
 * The per-attempt policies as named layers (`AttemptLayer`, src/pipeline/types.ts): the circuit
 * breaker and the per-try timeout. src/pipeline/route_chain.ts composes them per route; the
 * cluster call (src/upstream/call.ts) runs them around every attempt, for HTTP and gRPC alike.
 */
import {
  type AttemptEndpoint,
  type AttemptLayer,
  type AttemptTicket,
  type AttemptVerdict,
  TimeoutReason,
} from "../pipeline/types.ts";
import { ProxyError } from "../pipeline/errors.ts";
import type { BreakerStore } from "./circuit_breaker.ts";
import type { DeadlineQueue } from "./deadlines.ts";

/**
 * The circuit breaker: an endpoint whose breaker is open (or half-open with every probe out) is
 * refused; each attempt's verdict moves its breaker. `perCluster`: one breaker (slot 0) for all.
 */
export function breakerLayer(store: BreakerStore, perCluster: boolean): AttemptLayer {
  const slotOf = (e: AttemptEndpoint) => perCluster ? 0 : e.slot;
  return {
    name: "circuit_breaker",
    enter(endpoint): AttemptTicket | undefined {
      const slot = slotOf(endpoint);
      const permit = store.acquire(slot);
      if (permit === 0) return undefined;
      return {
        settle(verdict: AttemptVerdict) {
          if (verdict === "success") store.onSuccess(slot, permit);
          else if (verdict === "failure") store.onFailure(slot, permit);
          else store.release(slot, permit);
        },
      };
    },
    refusal(endpoints, cluster) {
      const wait = Math.min(...endpoints.map((e) => store.retryAfterMs(slotOf(e))));
      return new ProxyError("breaker_open", `circuit breaker open for cluster ${cluster}`, {
        headers: { "retry-after": String(Math.max(1, Math.ceil(wait / 1000))) },
      });
    },
  };
}

/**
 * The per-try timeout: the attempt's signal aborts (with a `TimeoutReason`) when no answer came
 * within `ms`. After the answer it still follows the call's signal, since the answer's body may
 * still be streaming on it.
 */
export function perTryTimeoutLayer(ms: number, deadlines: DeadlineQueue): AttemptLayer {
  return {
    name: "per_try_timeout",
    enter(endpoint, parent): AttemptTicket {
      const ctl = new AbortController();
      const follow = () => ctl.abort(parent.reason);
      if (parent.aborted) follow();
      else parent.addEventListener("abort", follow, { once: true });
      let d: { cancel(): void } | undefined = deadlines.arm(ms, () =>
        ctl.abort(
          new TimeoutReason(`no response from ${endpoint.origin} within ${ms} ms (per try)`),
        ));
      const disarm = () => {
        d?.cancel();
        d = undefined;
      };
      return { signal: ctl.signal, answered: disarm, settle: disarm };
    },
    refusal(_endpoints, cluster) {
      return new ProxyError("internal", `per-try timeout refused cluster ${cluster}`);
    },
  };
}
