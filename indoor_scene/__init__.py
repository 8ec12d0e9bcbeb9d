"""Indoor scene classification from scratch (MIT Indoor67; 15-Scene offline) with a small ResNet."""
