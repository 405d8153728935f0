"""Network models: the E-I RNN fitted to recordings and its building blocks."""
from .connectivity import FullRankWeights, LowRankWeights, build_recurrent_weights, dale_signs
from .eirnn import EIRNN, RNNOutput, hidden_split
from .embedding import AttentionEmbedding, LinearEmbedding, build_embedding
from .ensemble import EnsembleEIRNN
from .time_constants import TimeConstants

__all__ = [
    "EIRNN", "RNNOutput", "hidden_split", "FullRankWeights", "LowRankWeights", "build_recurrent_weights",
    "dale_signs", "AttentionEmbedding", "LinearEmbedding", "build_embedding", "TimeConstants", "EnsembleEIRNN",
]
