"""Hidden states of a fairseq encoder-decoder forward pass, for hidden-state distillation."""
from contextlib import contextmanager

from ..errors import UserError


@contextmanager
def _encoder_output(model):
    box = {}
    handle = model.encoder.register_forward_hook(lambda module, inputs, out: box.update(out=out))
    try:
        yield box
    finally:
        handle.remove()


def forward_with_states(model, net_input, with_states: bool):
    """``model(**net_input)`` and, when asked, the encoder and decoder hidden states fairseq's
    transformer returns (embedding output, then one per layer; time-major)."""
    if not with_states:
        return model(**net_input), None, None
    with _encoder_output(model) as box:
        net_output = model(**net_input)
    encoder_out = box.get("out")
    encoder_states = encoder_out.get("encoder_states") if isinstance(encoder_out, dict) else None
    extra = net_output[1] if isinstance(net_output[1], dict) else {}
    decoder_states = extra.get("inner_states")
    if not encoder_states or not decoder_states:
        raise UserError(f"hidden-state distillation (--kd-hidden-weight) needs the encoder "
                           f"and decoder states of a transformer; {type(model).__name__} "
                           "returns none")
    return net_output, encoder_states, decoder_states
