// Which model a learned concept or an Imagic state belongs to. The bot looks concepts up in the cache by
// it (it has the settings, not the model) and the engine writes and checks them by it, so both compute it
// here, from the settings alone. Beside MODEL it names what changes the weights or the function computed
// from one MODEL string: a hub revision other than main, a single file's MODEL_CONFIG, a prediction-type
// override. Left at their defaults they add nothing, so concepts saved before keep matching.

export interface ModelIdentitySettings {
  revision?: string | undefined;
  modelConfig?: string | undefined;
  predictionType?: "epsilon" | "v_prediction" | undefined;
}

export function modelIdentity(model: string, s: ModelIdentitySettings): string {
  const revision = s.revision && s.revision !== "main" ? `@${s.revision}` : "";
  const qualifiers = [
    ...(s.modelConfig ? [`config ${s.modelConfig}`] : []),
    ...(s.predictionType ? [`prediction ${s.predictionType}`] : []),
  ];
  return `${model}${revision}${qualifiers.length > 0 ? ` (${qualifiers.join(", ")})` : ""}`;
}

/** The identity of the model the app's settings (MODEL, MODEL_REVISION, …) load: what the engine computes. */
export function configuredModelIdentity(c: {
  model: string;
  modelRevision?: string | undefined;
  modelConfig?: string | undefined;
  modelPredictionType?: "auto" | "epsilon" | "v_prediction" | undefined;
}): string {
  return modelIdentity(c.model, {
    revision: c.modelRevision,
    modelConfig: c.modelConfig,
    predictionType: c.modelPredictionType === "auto" ? undefined : c.modelPredictionType,
  });
}
