"""Model card templates of peft-dect adapters (installed as the package `peft_dect.model_cards`)."""
