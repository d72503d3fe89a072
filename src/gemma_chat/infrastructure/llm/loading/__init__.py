"""Loading a model: where its weights come from (``model_source``) and the device, dtype and
quantization it runs with (``precision``)."""
