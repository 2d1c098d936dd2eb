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
