/**
 * The one JWT error authorization reads. Apart from src/policy/jwt.ts so that authz.ts can tell it
 * without importing jose, which is loaded only for configs with `jwt_providers`.
 */

/** A token that is missing, malformed or fails verification: the client gets 401. */
export class JwtRejected extends Error {
  constructor(readonly reason: string, options?: ErrorOptions) {
    super(reason, options);
    this.name = "JwtRejected";
  }
}
