"""FullyQT's quantized building blocks.

``grid`` (steps and codes) → ``quantizer`` (weight and activation quantizers) → ``weight_source``
(where a linear's weight comes from) + ``integer_form`` (its integer arithmetic) → ``linear``,
``attention``, ``layer_norm``, ``embedding``, ``activation``; ``weights`` finds a model's
quantized tensors for the exports and ``coverage``; ``config`` holds the options.
"""
