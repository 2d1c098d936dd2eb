import { UserFacingError } from "../../errors.js";

/**
 * A checkpoint, weight, config or tokenizer file that cannot be used. The message always names the file
 * (and the tensor or setting where there is one) and the problem, so it can be shown to an operator as is.
 */
export class ModelFileError extends UserFacingError {
  override readonly name = "ModelFileError";
  constructor(
    readonly file: string,
    problem: string,
  ) {
    super(`${file}: ${problem}`);
  }
}

/**
 * A network asked its weights for a parameter the checkpoint does not hold (params.ts). Where the file is
 * known (checkNetworkWeights, at load) it becomes a ModelFileError naming it.
 */
export class MissingParameterError extends Error {
  override readonly name = "MissingParameterError";
  constructor(
    readonly origin: string,
    readonly parameter: string,
  ) {
    super(`${origin}: parameter "${parameter}" is missing`);
  }
}
