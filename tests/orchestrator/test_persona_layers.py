from services.orchestrator.config import OrchestratorConfig
from services.orchestrator.persona import apply_persona_layers


def test_layers_map_onto_the_conversation_config():
    base = OrchestratorConfig(temperature=0.3, max_tokens=80)
    layers = {
        "llm": {"model": "smollm2", "sampling": {"temperature": 0.9, "top_p": 0.8, "max_tokens": 4096}},
        "tts": {"voice": "heart", "speed": 1.2},
        "asr": {"language": "pt-BR"},
        "turn_taking": {"patience": "LEVEL_HIGH", "interruptibility": "LEVEL_LOW"},
        "perception": {"enabled": True},
    }
    cfg = apply_persona_layers(base, layers)
    assert (cfg.llm_model, cfg.temperature, cfg.top_p) == ("smollm2", 0.9, 0.8)
    assert cfg.max_tokens == 512  # capped at what the LLM service accepts
    assert (cfg.voice, cfg.speed, cfg.language) == ("heart", 1.2, "pt")
    assert (cfg.end_of_turn_threshold, cfg.silence_timeout_ms) == (0.7, 2000)
    assert cfg.barge_in is False


def test_unset_layers_keep_the_deployment_defaults():
    base = OrchestratorConfig(temperature=0.3, voice="", barge_in=True)
    assert apply_persona_layers(base, {}) is base
    cfg = apply_persona_layers(base, {"llm": {"sampling": {}}, "turn_taking": {"patience": "LEVEL_UNSPECIFIED"}})
    assert cfg.temperature == 0.3 and cfg.end_of_turn_threshold == 0 and cfg.barge_in is True
    low = apply_persona_layers(base, {"turn_taking": {"patience": "LEVEL_LOW", "interruptibility": "LEVEL_HIGH"}})
    assert (low.end_of_turn_threshold, low.silence_timeout_ms, low.barge_in) == (0.35, 700, True)


def test_the_control_planes_stored_persona_layers_apply():
    """The spec the control plane stores for a conversation (proto JSON) is what the gateway applies."""
    from parley.v1 import control_pb2 as pb
    from services.control.server import _layers_dict

    persona = pb.Persona(layers=pb.PersonaLayers(
        llm=pb.LlmLayer(sampling=pb.LlmSampling(temperature=0.4)), tts=pb.TtsLayer(speed=1.25),
        turn_taking=pb.TurnTakingLayer(patience=pb.LEVEL_HIGH, interruptibility=pb.LEVEL_LOW)))
    cfg = apply_persona_layers(OrchestratorConfig(), _layers_dict(persona))
    assert (cfg.temperature, cfg.speed, cfg.end_of_turn_threshold, cfg.barge_in) == (0.4, 1.25, 0.7, False)
